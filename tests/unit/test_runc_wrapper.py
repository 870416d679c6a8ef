"""tools/kind/runc-nosysres: drops CAP_SYS_RESOURCE and a negative oomScoreAdj from the OCI spec it is
given (create/run: the bundle's config.json; exec: the --process file), leaves every other field as it
is, then execs the real runc with the same arguments. Needs jq (tools/kind/host-setup.sh installs it)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

WRAPPER = Path(__file__).resolve().parents[2] / "tools" / "kind" / "runc-nosysres"
CAPS = ["CAP_CHOWN", "CAP_SYS_RESOURCE", "CAP_NET_BIND_SERVICE"]


def process(oom: int | None) -> dict[str, Any]:
    p: dict[str, Any] = {
        "args": ["sh"],
        "cwd": "/",
        "capabilities": {k: list(CAPS) for k in ("bounding", "effective", "permitted")},
        "env": ["A=1"],
    }
    if oom is not None:
        p["oomScoreAdj"] = oom
    return p


def run(tmp: Path, *args: str) -> list[str]:
    """The wrapper with a fake runc that records its arguments."""
    fake = tmp / "runc"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp}/args\n')
    fake.chmod(0o755)
    subprocess.run([str(WRAPPER), *args], check=True, env={**os.environ, "RUNC_REAL": str(fake)}, cwd=tmp, timeout=30)
    return (tmp / "args").read_text().splitlines()


@pytest.mark.parametrize("form", ["--bundle", "-b", "--bundle="])
def test_create_fixes_the_bundles_config(tmp_path: Path, form: str) -> None:
    bundle = tmp_path / "b"
    bundle.mkdir()
    spec = {"ociVersion": "1.0.2", "process": process(-998), "root": {"path": "rootfs"}, "hostname": "x"}
    (bundle / "config.json").write_text(json.dumps(spec))
    args = [
        "--root",
        "/run/x",
        "create",
        *([f"--bundle={bundle}"] if form.endswith("=") else [form, str(bundle)]),
        "id1",
    ]
    assert run(tmp_path, *args) == args
    got = json.loads((bundle / "config.json").read_text())
    want = json.loads(json.dumps(spec))
    del want["process"]["oomScoreAdj"]
    for k in want["process"]["capabilities"]:
        want["process"]["capabilities"][k] = ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]
    assert got == want


def test_run_without_bundle_uses_the_working_directory(tmp_path: Path) -> None:
    spec = {"ociVersion": "1.0.2", "process": process(100)}
    (tmp_path / "config.json").write_text(json.dumps(spec))
    run(tmp_path, "run", "id2")
    got = json.loads((tmp_path / "config.json").read_text())
    assert got["process"]["oomScoreAdj"] == 100  # not negative: kept
    assert "CAP_SYS_RESOURCE" not in got["process"]["capabilities"]["bounding"]


def test_exec_fixes_the_process_file(tmp_path: Path) -> None:
    f = tmp_path / "process.json"
    f.write_text(json.dumps(process(None)))
    run(tmp_path, "exec", "--process", str(f), "id3")
    got = json.loads(f.read_text())
    kept = ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]
    assert got == {**process(None), "capabilities": {k: kept for k in ("bounding", "effective", "permitted")}}


def test_other_commands_pass_through_untouched(tmp_path: Path) -> None:
    doc = {"ociVersion": "1.0.2", "process": {"capabilities": {"bounding": ["CAP_SYS_RESOURCE"]}}}
    (tmp_path / "config.json").write_text(json.dumps(doc))
    before = (tmp_path / "config.json").read_text()
    assert run(tmp_path, "state", "id4") == ["state", "id4"]
    assert (tmp_path / "config.json").read_text() == before
