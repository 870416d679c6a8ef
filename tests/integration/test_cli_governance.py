"""``modship policy`` and ``modship audit`` as a user runs them (the real CLI in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.unit.test_approvals_api import POLICY

pytestmark = pytest.mark.slow


def modship(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODSHIP_HOME": str(home), "MODSHIP_REGISTRY": "sqlite:///" + str(home / "unused.db")}
    return subprocess.run(
        [sys.executable, "-m", "controller", *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_policy_set_audit_and_verify_detect_tampering(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**POLICY, "spec": {"systems": {"sys": {"windows": [{"cron": "99 * * * *"}]}}}}))
    r = modship(tmp_path, "policy", "set", str(bad))
    assert r.returncode == 2 and "spec.systems.sys.windows[0].cron" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "policy.yaml").exists() and not (tmp_path / "audit.jsonl").exists()

    good = tmp_path / "policy.yaml.in"
    good.write_text(yaml.safe_dump(POLICY))
    for why in ("first rules", "again"):
        r = modship(tmp_path, "policy", "set", str(good), "--reason", why)
        assert r.returncode == 0, r.stderr
    shown = json.loads(modship(tmp_path, "policy", "show", "-o", "json").stdout)
    assert shown["spec"]["systems"]["sys"]["approvals"] == 1

    rows = json.loads(modship(tmp_path, "audit", "--action", "policy", "-o", "json").stdout)
    got = [(e["seq"], e["reason"], e["before"] is None) for e in rows]
    assert got == [(0, "first rules", True), (1, "again", False)]
    assert json.loads(modship(tmp_path, "audit", "--system", "other", "-o", "json").stdout) == []
    assert modship(tmp_path, "audit", "--action", "nonsense").returncode == 2

    ok = modship(tmp_path, "audit", "verify")
    assert ok.returncode == 0 and "intact: 2 entries" in ok.stdout
    copied = tmp_path / "copy"  # e.g. the operator's log, copied off its volume with its head
    copied.mkdir()
    for name in ("audit.jsonl", "audit.jsonl.head"):
        (copied / name).write_bytes((tmp_path / name).read_bytes())
    assert modship(tmp_path, "audit", "verify", "--file", str(copied / "audit.jsonl")).returncode == 0
    r = modship(tmp_path, "audit", "verify", "--file", str(copied / "nope.jsonl"))
    assert r.returncode == 2 and "--file" in r.stderr

    log = tmp_path / "audit.jsonl"
    lines = log.read_text().splitlines()
    edited = json.loads(lines[0])
    edited["reason"] = "nothing happened"
    log.write_text("\n".join([json.dumps(edited, sort_keys=True), *lines[1:]]) + "\n")
    r = modship(tmp_path, "audit", "verify", "-o", "json")
    assert r.returncode == 1
    assert json.loads(r.stdout)["broken"] == {
        "line": 1,
        "seq": 0,
        "why": "its hash does not match its content (the entry was edited)",
    }
