"""Images built here with no registry: the operator image (also the in-cluster router) and a
revision image from `modship image build`, run for real on the private docker daemon. Ports are
published on 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from controller.adapters.router import native
from tests.conftest import Cli
from tests.images.conftest import OPERATOR, SYSTEM, docker, inspect
from tests.support.services import free_port, wait_until

pytestmark = [pytest.mark.images, pytest.mark.slow]

FORBIDDEN = ("bentoml", "onnxruntime", "numpy", "pandas", "pyarrow", "sklearn", "scipy", "torch")


@contextlib.contextmanager
def container(*args: str) -> Iterator[str]:
    name = f"modship-test-{uuid.uuid4().hex[:8]}"
    docker("run", "-d", "--name", name, *args)
    try:
        yield name
    finally:
        docker("rm", "-f", "-v", name, check=False)


def logs(name: str) -> str:
    p = docker("logs", "--tail", "40", name, check=False)
    return p.stdout + p.stderr


def test_operator_image_is_the_charts_default_non_root_and_read_only(operator_image: str) -> None:
    assert operator_image == f"{OPERATOR}:0.1.0"  # charts/modship: image.repository + appVersion
    cfg = inspect(operator_image)["Config"]
    assert cfg["User"] == "65532:65532"
    assert cfg["Cmd"] == ["python", "-m", "controller.entrypoints.operator"]
    probe = (
        "import importlib.util as u, json, os, sys\n"
        "import controller.entrypoints.operator, controller.entrypoints.router, controller.adapters.router.server\n"
        "import controller.adapters.kube.target, controller.adapters.mlflow_registry, kopf, mlflow.tracking\n"
        f"print(json.dumps({{'uid': os.getuid(), 'installed': [m for m in {FORBIDDEN!r} if u.find_spec(m)],"
        " 'loaded': [m for m in sys.modules if m.split('.')[0] in ('bentoml', 'numpy', 'mlflow_server')],"
        " 'python': sys.version_info[:2]}))"
    )
    p = docker(
        "run", "--rm", "--read-only", "--user", "65532", "--network", "none", operator_image, "python", "-c", probe
    )
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got == {"uid": 65532, "installed": [], "loaded": [], "python": [3, 11]}
    write = docker(
        "run", "--rm", "--read-only", "--user", "65532", operator_image, "sh", "-c", "touch /opt/x", check=False
    )
    assert write.returncode != 0 and "Read-only file system" in write.stderr


def test_operator_image_runs_the_router(operator_image: str) -> None:
    port = free_port()
    cmd = ["python", "-m", "controller.entrypoints.router", "--host", "0.0.0.0", "--port", "8080", "--system", "demo"]
    with container("--read-only", "--user", "65532", "-p", f"127.0.0.1:{port}:8080", operator_image, *cmd) as name:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> httpx.Response | None:
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(f"{url}/-/modship/healthz", timeout=2)
                return r if r.status_code == 200 else None
            return None

        wait_until(healthy, timeout=60, interval=0.2, what=f"the router in the operator image ({logs(name)})")
        metrics = httpx.get(f"{url}/metrics", timeout=5)
        assert metrics.status_code == 200 and "modship_" in metrics.text


def test_the_router_in_the_operator_image_runs_compiled_from_the_hosts_build(operator_image: str) -> None:
    """tools/images/build.sh ships the router's native build for these sources (``make native``) and
    the image's interpreter loads it: the in-cluster router runs compiled, as the local one does."""
    if native.built() is None:
        pytest.skip("no native build here (no C compiler): the image's router runs its Python")
    probe = "from controller.adapters.router import server, wire; print(server.__file__); print(wire.__file__)"
    p = docker(
        "run", "--rm", "--read-only", "--user", "65532", "--network", "none", operator_image, "python", "-c", probe
    )
    files = p.stdout.split()
    assert len(files) == 2 and all(f.startswith("/opt/modship/native/") and f.endswith(".so") for f in files), p


def test_revision_image_serves_predict(revision_image: dict[str, Any]) -> None:
    image, revision = revision_image["image"], revision_image["revision"]
    assert image == f"modship.local/topic-classifier:{revision}" and not image.endswith(":latest")
    assert revision_image["runtime"].startswith("modship.local/runtime:")
    meta = inspect(image)
    assert meta["Config"]["User"] == "65532:65532"
    assert meta["Config"]["Labels"]["dev.modship.revision"] == revision
    assert "3000/tcp" in meta["Config"]["ExposedPorts"]
    port = free_port()
    args = ["--read-only", "--tmpfs", "/tmp:exec,mode=1777", "--user", "65532", "-p", f"127.0.0.1:{port}:3000", image]
    with container(*args) as name:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool | None:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200 or None
            return None

        wait_until(ready, timeout=300, interval=0.5, what=f"the revision image to be ready ({logs(name)})")
        assert httpx.get(f"{url}/livez", timeout=5).status_code == 200
        r = httpx.post(f"{url}/predict", json={"text": "The striker scored twice in the cup final."}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["prediction"][0]["label"] == "sport" and body["meta"]["revision"] == revision, body
        bad = httpx.post(f"{url}/predict", json={"nope": 1}, timeout=30)
        assert bad.status_code == 400


def test_revision_image_refuses_a_tampered_module(revision_image: dict[str, Any]) -> None:
    """The digest check runs at start-up inside the image: change one module byte and it never serves."""
    script = (
        'f=$(find /home/bento/bento/src/modules -type f | sort | head -n 1); printf x >> "$f"; '
        "exec bentoml serve /home/bento/bento --host 127.0.0.1 --port 3000"
    )
    image = revision_image["image"]
    p = docker("run", "--rm", "--user", "0", "--network", "none", "--entrypoint", "sh", image, "-c", script,
               timeout=300, check=False)  # fmt: skip
    assert p.returncode != 0
    assert "digest mismatch in" in p.stdout + p.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--image", "Not A Repo"), "error: --image: 'Not A Repo:r000000000000' is not an image reference"),
        (("--image", "modship.local/t-{revision}:latest"), "never :latest"),
        (("--base", "modship.local/no-such-base:1"), "error: base image modship.local/no-such-base:1 not found"),
    ],
)
def test_image_build_refuses_bad_input_and_builds_nothing(image_cli: Cli, args: tuple[str, ...], says: str) -> None:
    before = ours()
    r = image_cli("image", "build", str(SYSTEM), *args)
    assert r.code in (2, 3), r
    assert says in r.err and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert ours() == before


def ours() -> list[str]:
    """Images `modship image build` makes (other builds may share the daemon)."""
    refs = (
        "modship.local/topic-classifier",
        "modship.local/t-*",
        "modship.local/runtime",
        "modship.local/no-such-base",
    )
    return sorted(x for ref in refs for x in docker("images", "-q", "--no-trunc", ref).stdout.split())
