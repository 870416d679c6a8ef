"""The rollout state machine: table tests per transition, scenarios tick by tick, properties."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.plan import rollout as machine
from controller.plan.actions import Event, SetAliases, SetFlags, SetTraffic, StopRevision
from controller.plan.observations import Controls, Health, Observations, Sample
from controller.plan.status import Phase, RolloutStatus
from controller.spec.rollout import Rollout

OK = Health(stable_ready=True, canary_ready=True)
GOOD = Sample(value=0.0, stable=0.0, samples=100)
BAD = Sample(value=0.5, stable=0.0, samples=100)
NODATA = Sample(value=None, samples=0)
DOWN = Sample(value=None, error="prometheus unreachable")


def rollout(
    steps: list[dict[str, Any]],
    *,
    revision: str | None = "B",
    background: dict[str, Any] | None = None,
    checks: list[dict[str, Any]] | None = None,
    **policies: Any,
) -> Rollout:
    canary: dict[str, Any] = {"steps": steps, "maxWeight": 50}
    if background:
        canary["analysis"] = background
    doc = {
        "apiVersion": "modship.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "sys"},
        "spec": {
            "system": "sys",
            "revision": revision,
            "strategy": {"canary": canary},
            "analysis": {
                "checks": checks
                or [
                    {
                        "name": "errors",
                        "metric": "errorRate",
                        "threshold": {"max": 0.05},
                        "interval": 1,
                        "count": 2,
                        "minSamples": 10,
                        "window": 2,
                    }
                ]
            },
            "policies": {"rollbackWindow": 60, "progressDeadline": 300, **policies},
        },
    }
    return Rollout.model_validate(doc)  # not from_document: it refuses setWeight > maxWeight, we test clamping


STABLE_A = RolloutStatus(stable="A", spec_hash="", phase=Phase.IDLE)


NO_CONTROLS = Controls()


def tick(
    r: Rollout,
    s: RolloutStatus,
    now: float,
    sample: Sample = GOOD,
    *,
    health: Health = OK,
    controls: Controls = NO_CONTROLS,
) -> machine.Decision:
    samples = {n: sample for n in machine.due_checks(r, s, now)}
    return machine.step(r, s, Observations(health, samples, controls), now)


def run(
    r: Rollout, s: RolloutStatus, until: float, sample: Sample | Callable[[float], Sample] = GOOD, **kw: Any
) -> tuple[RolloutStatus, list[machine.Decision]]:
    """Drive the machine tick by tick, honouring requeue_after, from t=0 to ``until``."""
    now, out = 0.0, []
    while now <= until:
        d = tick(r, s, now, sample(now) if callable(sample) else sample, **kw)
        out.append(d)
        s = d.status
        now += min(d.requeue_after if d.requeue_after is not None else 1.0, 1.0) or 0.25
    return s, out


def traffic(d: machine.Decision) -> SetTraffic:
    return next(a for a in d.actions if isinstance(a, SetTraffic))


def reasons(ds: list[machine.Decision]) -> list[str]:
    return [a.reason for d in ds for a in d.actions if isinstance(a, Event)]


# -- table: one transition per row -----------------------------------------------------------------


def test_nothing_to_do_without_a_target() -> None:
    d = tick(rollout([{"setWeight": 10}], revision=None), RolloutStatus(), 0)
    assert d.actions == () and d.requeue_after is None


def test_the_first_revision_is_stable_at_once() -> None:
    d = tick(rollout([{"setWeight": 10}], revision="A"), RolloutStatus(), 0)
    assert (d.status.stable, d.status.phase, d.status.canary) == ("A", Phase.IDLE, None)
    assert traffic(d) == SetTraffic(stable="A", canary=None, weight=0)
    assert SetAliases("A", None) in d.actions


@pytest.mark.parametrize(
    ("steps", "sample", "phase", "step", "weight"),
    [
        ([{"setWeight": 20}, {"pause": {}}], GOOD, Phase.PAUSED, 1, 20),  # weight, then wait for a person
        ([{"setWeight": 80}, {"pause": {}}], GOOD, Phase.PAUSED, 1, 50),  # clamped to maxWeight
        ([{"setWeight": 20}, {"pause": {"duration": "10s"}}], GOOD, Phase.PROGRESSING, 1, 20),
        ([{"setWeight": 20}, {"analysis": {"checks": ["errors"]}}], GOOD, Phase.PROGRESSING, 1, 20),  # running
        (
            [{"setWeight": 20}, {"analysis": {"checks": ["errors"]}}],
            BAD,
            Phase.PROGRESSING,
            1,
            20,
        ),  # 1 failure: 0 allowed...
        ([{"setMirror": {"percent": 30}}, {"pause": {}}], GOOD, Phase.PAUSED, 1, 0),
    ],
)
def test_first_tick_of_a_new_canary(
    steps: list[dict[str, Any]], sample: Sample, phase: Phase, step: int, weight: float
) -> None:
    d = tick(rollout(steps), STABLE_A, 0, sample)
    assert (d.status.phase, d.status.step, d.status.traffic.weight) == (phase, step, weight)
    assert d.status.canary == "B" and traffic(d).canary == "B"


@pytest.mark.parametrize(
    ("sample", "policy", "phase", "reason", "weight"),
    [
        (GOOD, "hold", Phase.PROMOTED, "StepsCompleted", 0),
        (BAD, "hold", Phase.ABORTED, "AnalysisFailed", 0),
        (NODATA, "hold", Phase.PAUSED, "AnalysisInconclusive", 20),
        (DOWN, "hold", Phase.PROGRESSING, "MetricsUnavailable", 20),
        (DOWN, "rollback", Phase.ABORTED, "MetricsUnavailable", 0),
    ],
)
def test_analysis_verdicts(sample: Sample, policy: str, phase: Phase, reason: str, weight: float) -> None:
    r = rollout([{"setWeight": 20}, {"analysis": {"checks": ["errors"]}}], metricsDown=policy)
    s, ds = run(r, STABLE_A, until=12, sample=sample)
    assert (s.phase, s.reason) == (phase, reason)
    assert traffic(ds[-1]).weight == weight


def test_pause_with_a_duration_then_promote() -> None:
    r = rollout([{"setWeight": 20}, {"pause": {"duration": "5s"}}, {"setWeight": 40}])
    d = tick(r, STABLE_A, 0)
    assert d.requeue_after == pytest.approx(5)
    assert tick(r, d.status, 4.9).status.step == 1
    done = tick(r, d.status, 5.0)
    assert done.status.phase is Phase.PROMOTED and done.status.stable == "B"
    assert done.status.previous_stable == "A"
    assert SetAliases("B", None) in done.actions


def test_indefinite_pause_waits_for_resume() -> None:
    r = rollout([{"setWeight": 20}, {"pause": {}}, {"setWeight": 40}, {"pause": {}}])
    s = tick(r, STABLE_A, 0).status
    assert s.phase is Phase.PAUSED and tick(r, s, 100).status.phase is Phase.PAUSED
    s = tick(r, s, 101, controls=Controls(resume=101)).status
    assert (s.phase, s.step, s.traffic.weight) == (Phase.PAUSED, 3, 40)
    s = tick(r, s, 102, controls=Controls(resume=101)).status  # an old resume is not reused
    assert s.step == 3
    assert tick(r, s, 103, controls=Controls(resume=103)).status.phase is Phase.PROMOTED


def test_user_pause_and_resume() -> None:
    r = rollout([{"setWeight": 20}, {"pause": {"duration": "5s"}}, {"setWeight": 40}])
    s = tick(r, STABLE_A, 0).status
    paused = tick(r, s, 1, controls=Controls(paused=True))
    assert paused.status.phase is Phase.PAUSED and "PausedByUser" in reasons([paused])
    assert tick(r, paused.status, 50, controls=Controls(paused=True)).status.phase is Phase.PAUSED
    assert tick(r, paused.status, 60, controls=Controls(paused=False)).status.phase is Phase.PROMOTED


def test_abort_then_retry() -> None:
    r = rollout([{"setWeight": 20}, {"pause": {}}])
    s = tick(r, STABLE_A, 0).status
    d = tick(r, s, 1, controls=Controls(abort=1))
    assert (d.status.phase, d.status.reason, traffic(d).weight, traffic(d).canary) == (
        Phase.ABORTED,
        "AbortedByUser",
        0,
        None,
    )
    assert StopRevision("B") in d.actions
    again = tick(r, d.status, 2, controls=Controls(abort=1))
    assert again.status.phase is Phase.ABORTED  # stays aborted: no silent retry
    retried = tick(r, again.status, 3, controls=Controls(abort=1, retry=3))
    assert (retried.status.phase, retried.status.step, retried.status.canary) == (Phase.PAUSED, 1, "B")


def test_promote_full_skips_the_remaining_steps() -> None:
    r = rollout([{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}])
    s = tick(r, STABLE_A, 0).status
    d = tick(r, s, 1, controls=Controls(promote_full=1))
    assert (d.status.phase, d.status.reason, d.status.stable) == (Phase.PROMOTED, "PromotedFull", "B")


def test_promote_full_with_a_new_canary_not_ready_yet_promotes_once_it_is() -> None:
    """`promote SYSTEM MODULE@V --full`: the target and promote --full arrive together; the canary
    is not ready on the first cycle. The command waits for it (polled every second) and then
    promotes: it is not consumed by the waiting."""
    r = rollout([{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}])
    full = Controls(promote_full=0.001)
    waiting = tick(r, STABLE_A, 0.5, health=Health(stable_ready=True, canary_ready=False), controls=full)
    assert (waiting.status.phase, waiting.status.canary) == (Phase.PROGRESSING, "B")
    assert waiting.requeue_after == pytest.approx(machine.HEALTH_POLL)
    d = tick(r, waiting.status, 1.5, controls=full)
    assert (d.status.phase, d.status.reason, d.status.stable) == (Phase.PROMOTED, "PromotedFull", "B")
    assert tick(r, d.status, 2.5, controls=full).status.phase is Phase.PROMOTED


def test_promote_full_while_paused_and_not_ready_polls_then_promotes() -> None:
    r = rollout([{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}])
    s = tick(r, STABLE_A, 0).status
    assert s.phase is Phase.PAUSED
    full = Controls(promote_full=1)
    d = tick(r, s, 1, health=Health(stable_ready=True, canary_ready=False), controls=full)
    assert d.requeue_after == pytest.approx(machine.HEALTH_POLL)
    assert tick(r, d.status, 2, controls=full).status.phase is Phase.PROMOTED


def test_a_canary_not_ready_is_polled_every_second() -> None:
    r = rollout([{"setWeight": 10}, {"pause": {}}])
    d = tick(r, STABLE_A, 0, health=Health(stable_ready=True, canary_ready=False))
    assert d.status.phase is Phase.PROGRESSING and d.requeue_after == pytest.approx(machine.HEALTH_POLL)


def test_a_changed_spec_mid_rollout_restarts_at_step_0() -> None:
    r = rollout([{"setWeight": 20}, {"pause": {}}, {"setWeight": 40}, {"pause": {}}])
    s = tick(r, STABLE_A, 0, controls=Controls()).status
    s = tick(r, s, 1, controls=Controls(resume=1)).status
    assert s.step == 3
    changed = rollout([{"setWeight": 30}, {"pause": {}}, {"setWeight": 40}, {"pause": {}}])
    d = tick(changed, s, 2, controls=Controls(resume=1))
    assert (d.status.step, d.status.traffic.weight) == (1, 30)
    assert "RolloutRestarted" in reasons([d])


def test_a_new_target_supersedes_the_canary() -> None:
    r = rollout([{"setWeight": 20}, {"pause": {}}])
    s = tick(r, STABLE_A, 0).status
    d = tick(rollout([{"setWeight": 20}, {"pause": {}}], revision="C"), s, 1)
    assert d.status.canary == "C" and "Superseded" in reasons([d])


def test_canary_health() -> None:
    r = rollout([{"setWeight": 20}, {"pause": {}}])
    waiting = tick(r, STABLE_A, 0, health=Health(True, False))
    assert waiting.status.step == 0 and waiting.requeue_after == pytest.approx(1.0)
    assert traffic(waiting).weight == 0
    failed = tick(r, waiting.status, 1, health=Health(True, False, canary_failed="crash loop"))
    assert (failed.status.phase, failed.status.reason) == (Phase.ABORTED, "CanaryFailed")


def test_progress_deadline_aborts() -> None:
    r = rollout([{"setWeight": 20}, {"analysis": {"checks": ["errors"]}}], progressDeadline=10)
    s, _ = run(r, STABLE_A, until=15, sample=DOWN)  # hold (metrics down) until the deadline
    assert (s.phase, s.reason) == (Phase.ABORTED, "ProgressDeadlineExceeded")


def test_rollback_window_and_instant_rollback() -> None:
    r = rollout([{"setWeight": 20}])
    promoted = tick(r, STABLE_A, 0).status
    assert promoted.phase is Phase.PROMOTED and promoted.previous_stable == "A"
    back = tick(rollout([{"setWeight": 20}], revision="A"), promoted, 10)
    assert (back.status.stable, back.status.previous_stable, back.status.phase) == ("A", "B", Phase.IDLE)
    assert traffic(back) == SetTraffic(stable="A", canary=None, weight=0) and "RolledBack" in reasons([back])
    closed = tick(r, promoted, 61)
    assert StopRevision("A") in closed.actions and closed.status.previous_stable is None


def test_set_flag_and_header_route_steps() -> None:
    r = rollout(
        [
            {"setFlag": {"name": "evaluation", "enabled": False}},
            {"setHeaderRoute": {"name": "X-Canary", "value": "1"}},
            {"setWeight": 10},
            {"pause": {}},
        ]
    )
    d = tick(r, STABLE_A, 0)
    assert SetFlags("B", (("evaluation", False, 100.0),)) in d.actions
    assert traffic(d) == SetTraffic(stable="A", canary="B", weight=10, header_route=("x-canary", "1"))


def test_background_analysis_failure_aborts_from_its_starting_step() -> None:
    r = rollout(
        [{"setWeight": 10}, {"pause": {"duration": "60s"}}], background={"checks": ["errors"], "startingStep": 1}
    )
    s, _ = run(r, STABLE_A, until=5, sample=BAD)
    assert (s.phase, s.reason) == (Phase.ABORTED, "AnalysisFailed")


def test_measurements_are_recorded_with_times_and_values() -> None:
    r = rollout([{"setWeight": 20}, {"analysis": {"checks": ["errors"]}}])
    s, _ = run(r, STABLE_A, until=1.5)
    run_ = s.step_analysis["errors"]
    assert run_.successes == 1 and run_.recent[0].at == 1.0 and run_.recent[0].value == 0.0


# -- properties --------------------------------------------------------------------------------------

samples_st = st.sampled_from([GOOD, BAD, NODATA, DOWN])
step_st = st.one_of(
    st.builds(lambda w: {"setWeight": w}, st.integers(0, 100)),
    st.just({"pause": {"duration": 2}}),
    st.just({"analysis": {"checks": ["errors"]}}),
    st.builds(lambda p: {"setMirror": {"percent": p}}, st.integers(0, 100)),
)
controls_st = st.sampled_from(["none", "pause", "unpause", "resume", "abort", "promote"])


def controls_at(kind: str, now: float, prev: Controls) -> Controls:
    match kind:
        case "pause":
            return replace(prev, paused=True)
        case "unpause":
            return replace(prev, paused=False)
        case "resume":
            return replace(prev, resume=now)
        case "abort":
            return replace(prev, abort=now)
        case "promote":
            return replace(prev, promote_full=now)
    return prev


@settings(max_examples=150, deadline=None)
@given(
    st.lists(step_st, min_size=1, max_size=6),
    st.lists(st.tuples(samples_st, controls_st), min_size=1, max_size=25),
    st.sampled_from(["hold", "rollback"]),
)
def test_invariants(steps: list[dict[str, Any]], ticks: list[tuple[Sample, str]], policy: str) -> None:
    r = rollout(steps, metricsDown=policy)
    s, controls, now = STABLE_A, Controls(), 0.0
    for sample, kind in ticks:
        controls = controls_at(kind, now, controls)
        d = tick(r, s, now, sample, controls=controls)
        # replaying the persisted status gives the same decision
        again = tick(r, RolloutStatus.from_storage(s.for_storage()), now, sample, controls=controls)
        assert again == d
        t = traffic(d)
        assert t.weight <= 50  # maxWeight
        if any(isinstance(a, Event) and a.reason == "AnalysisFailed" for a in d.actions):
            assert d.status.phase is Phase.ABORTED and t.weight == 0 and t.canary is None and t.mirror == 0
        if d.status.phase is Phase.ABORTED:
            assert t.canary is None and t.weight == 0
        s = d.status
        now += 1.0


@settings(max_examples=100, deadline=None)
@given(st.lists(step_st, min_size=1, max_size=5), st.integers(1, 40))
def test_inconclusive_never_promotes(steps: list[dict[str, Any]], n: int) -> None:
    steps = [*steps, {"analysis": {"checks": ["errors"]}}]
    r = rollout(steps)
    s = STABLE_A
    for i in range(n):
        s = tick(r, s, float(i), NODATA).status
        assert s.phase is not Phase.PROMOTED


def test_background_analysis_keeps_running_through_a_pause() -> None:
    r = rollout([{"setWeight": 50}, {"pause": {}}], background={"checks": ["errors"]})
    s = tick(r, STABLE_A, 0).status
    assert s.phase is Phase.PAUSED
    d = tick(r, s, 0.5)
    assert d.requeue_after is not None and d.requeue_after <= 1.0  # measurements stay scheduled
    s, _ = run(r, s, until=5, sample=BAD)
    assert (s.phase, s.reason) == (Phase.ABORTED, "AnalysisFailed")
