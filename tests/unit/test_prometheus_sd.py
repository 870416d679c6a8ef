"""Prometheus file-based service discovery of the local runtime: the target groups, the file
(written atomically, only on change) and the scrape config ``modship prometheus-config`` prints
(checked with Debian's ``promtool`` when it is installed)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from controller import settings
from controller.adapters import prometheus_sd
from controller.adapters.local_store import LocalStore
from controller.adapters.memory import MemoryRegistry
from controller.adapters.prometheus_sd import Publisher, SystemUnits, groups
from controller.entrypoints import local_wiring, runtime_metrics
from controller.plan.status import HistoryEntry, Phase, RolloutStatus
from tests.unit.test_control import A, B, C, rollout


def test_one_group_per_unit_with_its_labels() -> None:
    flying = SystemUnits("sys", router=8080, revisions={A: 9001, B: 9002, C: 9003}, stable=A, canary=B, previous=C)
    idle = SystemUnits("other", router=None, revisions={}, stable=None, canary=None, previous=None)

    def service(port: int, rev: str, role: str) -> dict[str, object]:
        labels = {"kind": "service", "system": "sys", "revision": rev, "role": role}
        return {"targets": [f"127.0.0.1:{port}"], "labels": labels}

    assert groups([flying, idle], controller="127.0.0.1:7000") == [
        {"targets": ["127.0.0.1:7000"], "labels": {"kind": "controller"}},
        {"targets": ["127.0.0.1:8080"], "labels": {"kind": "router", "system": "sys"}},
        service(9001, A, "stable"),
        service(9002, B, "canary"),
        service(9003, C, "previous"),
    ]
    tls = groups([], controller="10.0.0.1:7000", scheme="https")
    assert tls == [{"targets": ["10.0.0.1:7000"], "labels": {"kind": "controller", "__scheme__": "https"}}]


def test_the_file_is_written_atomically_and_only_when_it_changes(tmp_path: Path) -> None:
    p = Publisher(tmp_path)
    one = groups([], controller="127.0.0.1:7000")
    assert p.write(one) and json.loads(p.path.read_text()) == one
    before = p.path.stat().st_mtime_ns
    assert not p.write(one) and p.path.stat().st_mtime_ns == before
    p.path.unlink()
    assert p.write(one)  # gone (someone cleaned up): written again
    assert p.write([]) and json.loads(p.path.read_text()) == []
    assert not list(p.path.parent.glob(".*.tmp"))


def test_the_controller_publishes_what_runs_and_its_rollout_metrics(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_rollout("sys", rollout(A))
    store.save("sys", RolloutStatus(phase=Phase.IDLE, stable=A, history=(HistoryEntry(A, "Initial", 1.0),)))
    c = local_wiring.controller(
        settings.Settings(home=tmp_path, registry_uri="memory:"), registry=MemoryRegistry(), api=("http", "h:1")
    )
    c.publish_targets()
    assert json.loads((tmp_path / prometheus_sd.FILE).read_text()) == [
        {"targets": ["h:1"], "labels": {"kind": "controller"}}
    ]
    c.metrics.show(("", "sys"), "Idle", 0.0)
    c.metrics.start(("", "sys"), rollout(A))
    text = runtime_metrics.render(c).decode()
    assert 'modship_rollout_phase{namespace="",phase="Idle",rollout="sys"} 1.0' in text
    # counters exist at 0 before their first event, so that increase() counts that event
    assert 'modship_rollout_rollbacks_total{namespace="",reason="AnalysisFailed",rollout="sys"} 0.0' in text
    assert (
        'modship_rollout_analysis_verdicts_total{check="errors",namespace="",rollout="sys",verdict="Failed"} 0.0'
        in text
    )
    assert "# TYPE modship_runtime_processes gauge" in text


def test_the_printed_scrape_config(tmp_path: Path) -> None:
    text = prometheus_sd.scrape_config(tmp_path, interval="2s", job="mine")
    job = yaml.safe_load(text)["scrape_configs"][0]
    assert job["job_name"] == "mine" and job["honor_labels"] is True
    assert job["file_sd_configs"] == [
        {"files": [str(tmp_path / "prometheus" / "targets.json")], "refresh_interval": "5s"}
    ]
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make system-deps)")
    (tmp_path / "prometheus.yml").write_text(text)
    Publisher(tmp_path).write(groups([], controller="127.0.0.1:7000"))
    r = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
