"""The private docker daemon and the images the `images` tests use (tools/kind/host-setup.sh,
tools/images/build.sh, `modship image build`); each built once per session."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli
from tests.support import examples

REPO = Path(__file__).resolve().parents[2]
SOCKET = "unix:///run/modship-docker.sock"
SYSTEM = REPO / "examples" / "systems" / "topic-classifier.yaml"
OPERATOR = "ghcr.io/modship/modship"


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_HOST": SOCKET, "DOCKER_BUILDKIT": "0"}
    p = subprocess.run(["docker", *args], capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if check and p.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def inspect(ref: str) -> dict[str, Any]:
    doc: list[dict[str, Any]] = json.loads(docker("image", "inspect", ref).stdout)
    return doc[0]


@pytest.fixture(scope="session")
def daemon() -> Iterator[str]:
    """The private dockerd (started by tools/kind/host-setup.sh unless it answers), DOCKER_HOST set."""
    p = subprocess.run(["bash", str(REPO / "tools/kind/host-setup.sh")], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"host-setup.sh -> {p.returncode}\n{p.stderr[-3000:]}"
    deadline = time.monotonic() + 60
    while docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=30).returncode != 0:
        assert time.monotonic() < deadline, "the private docker daemon does not answer"
        time.sleep(0.5)
    old = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = SOCKET
    yield SOCKET
    if old is None:
        os.environ.pop("DOCKER_HOST", None)
    else:
        os.environ["DOCKER_HOST"] = old


@pytest.fixture(scope="session")
def operator_image(daemon: str) -> str:
    t0 = time.monotonic()
    p = subprocess.run(
        ["bash", str(REPO / "tools/images/build.sh")], capture_output=True, text=True, timeout=1800,
        env={**os.environ, "DOCKER_HOST": daemon},
    )  # fmt: skip
    assert p.returncode == 0, f"tools/images/build.sh -> {p.returncode}\n{p.stderr[-3000:]}"
    tag = p.stdout.strip().splitlines()[-1]
    print(f"\n[images] {tag} ready in {time.monotonic() - t0:.1f}s")
    return tag


@pytest.fixture(scope="session")
def image_cli(daemon: str, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """The CLI on the embedded registry, with the example modules registered."""
    cli = Cli(home=tmp_path_factory.mktemp("images") / "home", registry=None)
    root, _ = examples.build()
    cli.ok("module", "register", *[str(root / n) for n in examples.ORDER], "--skip-existing", timeout=900)
    return cli


@pytest.fixture(scope="session")
def revision_image(image_cli: Cli) -> dict[str, Any]:
    """`modship image build` of the example system: the base is built first when missing."""
    p = subprocess.run(["bash", str(REPO / "tools/images/python-base.sh")], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    t0 = time.monotonic()
    out: dict[str, Any] = json.loads(image_cli.ok("image", "build", str(SYSTEM), "-o", "json", timeout=1800).out)
    print(f"\n[images] {out['image']} ready in {time.monotonic() - t0:.1f}s")
    return out
