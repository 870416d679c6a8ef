"""reconcile_once on in-memory adapters, tick by tick with an explicit ``now``: the same path the
local controller and the operator take, without processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from controller.adapters.memory import MemoryMetrics, MemoryStore, MemoryTarget
from controller.apply import reconcile
from controller.plan.actions import Event
from controller.plan.observations import Controls, QueryContext, Sample
from controller.plan.status import Phase
from controller.spec.rollout import Check, Provider, Rollout

ROLLOUT: dict[str, Any] = {
    "apiVersion": "modship.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "sys"},
    "spec": {"system": "sys", "revision": "rA",
             "strategy": {"canary": {"steps": [{"setWeight": 20}, {"analysis": {"checks": ["errors"]}},
                                               {"setWeight": 60}, {"pause": {"duration": 3}}]}},
             "analysis": {"checks": [{"name": "errors", "metric": "errorRate", "threshold": {"max": 0.05},
                                      "window": 2, "interval": 1, "count": 2, "minSamples": 10}]}},
}  # fmt: skip


def world(error_rate: float = 0.0) -> tuple[MemoryStore, MemoryTarget, MemoryMetrics, list[Event]]:
    store, target = MemoryStore(), MemoryTarget(start_delay=1)
    store.rollouts["sys"] = Rollout.model_validate(ROLLOUT)
    metrics = MemoryMetrics(lambda c, ctx: Sample(value=error_rate, stable=0.0, samples=50))
    return store, target, metrics, []


def drive(store: MemoryStore, target: MemoryTarget, metrics: MemoryMetrics, events: list[Event], *,
          start: float, until: float) -> float:  # fmt: skip
    now = start
    while now <= until:
        d = reconcile.reconcile_once("sys", store=store, target=target, sources={Provider.BUILTIN: metrics}, now=now,
                                     record=events.append)  # fmt: skip
        now += min(d.requeue_after if d.requeue_after is not None else 1.0, 1.0) or 0.5
    return now


def promote(store: MemoryStore, revision: str) -> None:
    r = store.rollouts["sys"]
    store.rollouts["sys"] = r.model_copy(update={"spec": r.spec.model_copy(update={"revision": revision})})


def test_first_revision_then_a_promotion_through_every_step() -> None:
    store, target, metrics, events = world()
    now = drive(store, target, metrics, events, start=0, until=2)
    assert store.statuses["sys"].stable == "rA" and target.running == {"rA": "stable"}
    promote(store, "rB")
    drive(store, target, metrics, events, start=now, until=now + 20)
    s = store.statuses["sys"]
    assert (s.phase, s.stable, s.previous_stable) == (Phase.PROMOTED, "rB", "rA")
    routes = [c[1] for c in target.calls if c[0] == "route"]
    assert routes == ["rA/None@0", "rA/rB@0", "rA/rB@20", "rA/rB@60", "rB/None@0"]  # 0 % until it is ready
    assert [e.reason for e in events].count("AnalysisSuccessful") == 1
    assert metrics.queries and all(rev == "rB" for _, rev in metrics.queries)


def test_a_failing_canary_is_rolled_back_and_stopped() -> None:
    store, target, metrics, events = world(error_rate=0.5)
    now = drive(store, target, metrics, events, start=0, until=2)
    promote(store, "rB")
    drive(store, target, metrics, events, start=now, until=now + 10)
    s = store.statuses["sys"]
    assert (s.phase, s.reason, s.stable) == (Phase.ABORTED, "AnalysisFailed", "rA")
    assert target.traffic is not None and target.traffic.canary is None and target.traffic.weight == 0
    assert "rB" not in target.running and ("stop", "rB") in target.calls


def test_metrics_down_holds_and_a_crashing_canary_aborts() -> None:
    store, target, metrics, events = world()
    now = drive(store, target, metrics, events, start=0, until=2)
    promote(store, "rB")
    metrics.up = False
    now = drive(store, target, metrics, events, start=now, until=now + 15)
    s = store.statuses["sys"]
    assert (s.phase, s.reason, s.traffic.weight) == (Phase.PROGRESSING, "MetricsUnavailable", 20)
    target.failing.add("rB")
    drive(store, target, metrics, events, start=now, until=now + 2)
    assert store.statuses["sys"].reason == "CanaryFailed"


def test_commands_from_people_are_consumed_once() -> None:
    store, target, metrics, events = world()
    now = drive(store, target, metrics, events, start=0, until=2)
    promote(store, "rB")
    now = drive(store, target, metrics, events, start=now, until=now + 1)
    store.controls["sys"] = Controls(paused=True)
    now = drive(store, target, metrics, events, start=now, until=now + 5)
    assert store.statuses["sys"].phase is Phase.PAUSED
    store.controls["sys"] = Controls(paused=False, abort=now)
    drive(store, target, metrics, events, start=now, until=now + 3)
    assert store.statuses["sys"].reason == "AbortedByUser"


def test_the_provider_is_asked_for_the_canary_against_stable() -> None:
    seen: list[QueryContext] = []

    def answer(check: Check, ctx: QueryContext) -> Sample:
        seen.append(ctx)
        return Sample(0.0, 0.0, 50)

    store, target, _, events = world()
    metrics = MemoryMetrics(answer)
    now = drive(store, target, metrics, events, start=0, until=2)
    promote(store, "rB")
    drive(store, target, metrics, events, start=now, until=now + 6)
    assert seen and {(c.revision, c.stable_revision) for c in seen} == {("rB", "rA")}
    assert all(c.window_s <= 2 for c in seen)  # never reaching before the analysis started


def test_simulate_is_a_dry_run_in_virtual_time() -> None:
    from controller.apply import simulate

    def run(r: Rollout, **kw: Any) -> tuple[list[simulate.Tick], Phase, float]:
        return simulate.run(r, store=MemoryStore(), target=MemoryTarget(), metrics=MemoryMetrics, **kw)

    r = Rollout.model_validate(ROLLOUT)
    ticks, phase, took = run(r)
    assert phase is Phase.PROMOTED and 3 <= took < 60
    assert [t.event.reason for t in ticks][-1] == "Promoted"
    ticks, phase, _ = run(r, failing=frozenset({"errors"}))
    assert phase is Phase.ABORTED and ticks[-1].event.reason == "AnalysisFailed"


def test_modship_simulate_runs_the_dry_run_on_the_in_memory_adapters(tmp_path: Path) -> None:
    """The CLI is where the dry run gets its adapters: the whole command, as a user runs it."""
    (tmp_path / "rollout.yaml").write_text(json.dumps(ROLLOUT))
    cmd = [sys.executable, "-m", "controller", "simulate", str(tmp_path / "rollout.yaml"), "-o", "json"]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["phase"] == "Promoted" and doc["timeline"][-1]["reason"] == "Promoted"
    failing = subprocess.run([*cmd, "--fail", "errors"], capture_output=True, text=True, timeout=60)
    assert json.loads(failing.stdout)["phase"] == "Aborted", failing.stderr
