"""A kind cluster with real pods for the module (see tests/support/kindenv.py, tools/kind/build.sh)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest

from tests.support.kindenv import KindCluster, build_node_image


@pytest.fixture(scope="session")
def kind_node_image() -> str:
    """The node image tag from tools/kind/build.sh (built on first use, seconds when cached)."""
    t0 = time.monotonic()
    tag = build_node_image()
    sys.stderr.write(f"\n[kind] node image {tag} ready in {time.monotonic() - t0:.1f}s\n")
    return tag


@pytest.fixture(scope="session")
def kind_cluster(kind_node_image: str) -> Iterator[KindCluster]:
    """One single-node kind cluster for the session (tests use their own namespaces), deleted afterwards.

    Raises (the tests error) with the exact `kind create` error and the exported logs' path.
    """
    with KindCluster(kind_node_image) as kc:
        sys.stderr.write(f"\n[kind] cluster {kc.name} up in {kc.create_seconds:.1f}s\n")
        yield kc


@pytest.fixture(scope="module", autouse=True)
def _free_the_cluster(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test module: delete the NodePort Services and the namespaces it created, so the next
    module of the session's shared cluster can publish on the same NodePorts and gets the node's CPU."""
    mine = [i for i in request.session.items if i.nodeid.startswith(f"{request.node.nodeid}::")]
    if not any("kind_cluster" in getattr(i, "fixturenames", ()) for i in mine):
        yield
        return
    kc: KindCluster = request.getfixturevalue("kind_cluster")
    before = {ns["metadata"]["name"] for ns in kc.get_json("namespaces")["items"]}
    yield
    created = {ns["metadata"]["name"] for ns in kc.get_json("namespaces")["items"]} - before
    for svc in kc.get_json("services", "--all-namespaces")["items"]:
        meta = svc["metadata"]
        if meta["namespace"] in created and svc["spec"].get("type") == "NodePort":
            kc.kubectl("-n", meta["namespace"], "delete", "service", meta["name"], "--wait=true", check=False)
    for ns in sorted(created):
        kc.kubectl("delete", "namespace", ns, "--wait=false", check=False)
