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
