"""A rollout in flight, one cycle: people's commands, health, analysis verdicts, then the steps.

Every function returns the new status with the events it causes; nothing is appended to a list
passed around. What the rollout waits for is the status' ``waiting`` field, never its message.
"""

from __future__ import annotations

from dataclasses import replace

from controller.plan import analysis, gates, governance, schedule, transitions
from controller.plan.actions import Event
from controller.plan.observations import Controls, Observations
from controller.plan.reasons import Reason, Waiting
from controller.plan.status import CheckRun, Phase, RolloutStatus, Verdict
from controller.spec.rollout import MetricsDown, Rollout

Moved = transitions.Moved


def is_new(at: float | None, s: RolloutStatus) -> bool:
    """A command given after the status' handled mark."""
    return at is not None and at > s.handled_controls


def handled(c: Controls, s: RolloutStatus, mark: float) -> float:
    """The handled mark after a cycle: every command up to now counts as acted on, except a
    ``promote --full`` still waiting for its canary (it acts once the canary is ready)."""
    full = c.promote_full
    if full is None or full <= mark or not s.in_flight:
        return max(mark, c.latest())
    return max([mark, *(t for t in c.times() if t < full)])


def progress(r: Rollout, s: RolloutStatus, obs: Observations, now: float) -> Moved:
    c, health = obs.controls, obs.health
    if s.waiting in (Waiting.CANARY, Waiting.METRICS, Waiting.APPROVAL, Waiting.SOAK, Waiting.GATE, Waiting.GATE_ASK):
        # re-established below while it lasts
        s = replace(s, waiting=None)
    if is_new(c.abort, s):
        return transitions.abort(s, Reason.ABORTED_BY_USER, "abort requested", now)
    if health.canary_failed:
        return transitions.abort(s, Reason.CANARY_FAILED, health.canary_failed, now)
    gate = governance.gate(obs.release, s, now)
    if gate.rejected is not None:
        return transitions.abort(s, Reason.REJECTED, gate.rejected, now)
    if is_new(c.promote_full, s):
        if health.canary_ready:
            return _held(s, gate) if not gate.open else transitions.promote(r, s, now, Reason.PROMOTED_FULL)
        return replace(s, waiting=Waiting.CANARY, message="promote --full: waiting for the canary to be ready"), ()
    events: tuple[Event, ...] = ()
    if is_new(c.resume, s) and s.phase is Phase.PAUSED:
        s, events = _resume(r, s, now)
    hold = False
    if health.canary_ready:  # background analysis runs through pauses: the canary still serves
        s, more, hold = _background(r, _record(r, s, obs, now), now)
        events += more
        if s.phase is Phase.ABORTED:
            return s, events
    if c.paused:
        if s.waiting is not Waiting.USER:
            events += (Event(Reason.PAUSED_BY_USER, f"paused at step {s.step}"),)
        paused = replace(s, phase=Phase.PAUSED, reason=Reason.PAUSED_BY_USER, message="paused by user")
        return replace(paused, waiting=Waiting.USER), events
    if s.phase is Phase.PAUSED and s.waiting is Waiting.USER:
        s = replace(s, phase=Phase.PROGRESSING, reason=Reason.RESUMED, message="resumed", waiting=None)
    if s.phase is Phase.PAUSED:
        return s, events  # a pause step or an inconclusive analysis: only resume or abort continue
    deadline = r.spec.policies.progress_deadline
    at_gate = s.reason is Reason.GATE_HOLDING  # waiting for a gate is not a lack of progress
    if s.step_started is not None and now - s.step_started > deadline and s.step < len(r.steps) and not at_gate:
        why = f"step {s.step} made no progress for {deadline:g}s"
        s, more = transitions.abort(s, Reason.PROGRESS_DEADLINE_EXCEEDED, why, now)
        return s, events + more
    if not health.canary_ready:
        return replace(s, waiting=Waiting.CANARY, message=f"waiting for canary {s.canary} to be ready"), events
    s, more, stop = gates.before_steps(r, s, obs, now)
    events += more
    if stop:
        return s, events  # a gate holds, or aborted the canary
    if hold:
        return s, events
    s, more = _advance(r, s, obs, now)
    return s, events + more


def _held(s: RolloutStatus, gate: governance.Gate) -> Moved:
    """The steps are done but the policy holds the canary at its weight (approvals, soak)."""
    assert gate.waiting is not None
    events = () if s.reason is gate.reason else (Event(gate.reason, f"{s.canary}: {gate.message}"),)
    return replace(s, reason=gate.reason, message=gate.message, waiting=gate.waiting), events


def _resume(r: Rollout, s: RolloutStatus, now: float) -> Moved:
    events = (Event(Reason.RESUMED, f"resumed at step {s.step}"),)
    resumed = replace(s, phase=Phase.PROGRESSING, reason=Reason.RESUMED, message="resumed", waiting=None)
    if s.waiting is Waiting.REVIEW:  # re-run the step's analysis from scratch
        return replace(resumed, step_started=now, step_analysis={}, message="resumed: analysis restarts"), events
    if s.step < len(r.steps) and r.steps[s.step].pause is not None:
        return replace(resumed, step=s.step + 1, step_started=now), events
    return resumed, events


def _record(r: Rollout, s: RolloutStatus, obs: Observations, now: float) -> RolloutStatus:
    due = set(schedule.due_checks(r, s, now))
    step_checks, bg_checks = set(schedule.active_step_checks(r, s)), set(schedule.active_background(r, s))
    full = {n: f for n, (_, f) in schedule.windows(r, s, now).items()}
    sa, bg, decided = dict(s.step_analysis), dict(s.background), dict(s.decided)
    for name, sample in sorted(obs.samples.items()):
        if name not in due:
            continue
        m = analysis.measure(r.check(name), sample, now, window_full=full.get(name, True))
        if name in bg_checks:
            bg[name] = bg.get(name, CheckRun()).record(m)
            decided[name] = replace(bg[name], recent=(m,))
        if name in step_checks:
            sa[name] = sa.get(name, CheckRun()).record(m)
            decided[name] = replace(sa[name], recent=(m,))
    return replace(s, step_analysis=sa, background=bg, decided=decided)


def _background(r: Rollout, s: RolloutStatus, now: float) -> tuple[RolloutStatus, tuple[Event, ...], bool]:
    bg = r.spec.strategy.canary.analysis
    if bg is None:
        return s, (), False
    if s.background_started is None:
        if s.step < bg.starting_step:
            return s, (), False
        s = replace(s, background_started=now)
    checks = {n: r.check(n) for n in bg.checks}
    verdict = analysis.analysis_verdict(checks, s.background, background=True)
    return judge(r, s, verdict, "background", now=now)


def judge(
    r: Rollout, s: RolloutStatus, v: Verdict, where: str, *, now: float
) -> tuple[RolloutStatus, tuple[Event, ...], bool]:
    """React to an analysis verdict; True when the rollout must not advance this cycle."""
    match v:
        case Verdict.FAILED:
            return *transitions.abort(s, Reason.ANALYSIS_FAILED, f"{where} analysis failed", now), True
        case Verdict.INCONCLUSIVE:
            why = f"{where} analysis is inconclusive: paused for a person"
            paused = replace(
                s,
                phase=Phase.PAUSED,
                reason=Reason.ANALYSIS_INCONCLUSIVE,
                message=f"{where} analysis inconclusive: resume to retry, or abort",
                waiting=Waiting.REVIEW,
            )
            return paused, (Event(Reason.ANALYSIS_INCONCLUSIVE, why),), True
        case Verdict.ERROR:
            if r.spec.policies.metrics_down is MetricsDown.ROLLBACK:
                why = f"{where} analysis: metrics unavailable"
                return *transitions.abort(s, Reason.METRICS_UNAVAILABLE, why, now), True
            events: tuple[Event, ...] = ()
            if s.reason is not Reason.METRICS_UNAVAILABLE:
                why = f"{where} analysis: metrics unavailable: holding"
                events = (Event(Reason.METRICS_UNAVAILABLE, why, warning=True),)
            msg = f"holding at step {s.step}: metrics unavailable"
            return replace(s, reason=Reason.METRICS_UNAVAILABLE, message=msg, waiting=Waiting.METRICS), events, True
        case Verdict.RUNNING:
            return s, (), where != "background"
        case Verdict.SUCCESSFUL:
            return s, (), False


def _advance(r: Rollout, s: RolloutStatus, obs: Observations, now: float) -> Moved:
    events: tuple[Event, ...] = ()
    while s.step < len(r.steps):
        s, more, stop = _one_step(r, s, obs, now)
        events += more
        if stop:
            return s, events
        s = replace(s, reason=Reason.STEP_COMPLETED, message=f"at step {s.step} of {len(r.steps)}")
    s, more, hold = gates.confirm_promotion(r, s, obs, now)
    if hold:
        return s, events + more
    events += more
    gate = governance.gate(obs.release, s, now)  # the policy: approvals and soak
    if not gate.open:
        s, more = _held(s, gate)
        return s, events + more
    s, more = transitions.promote(r, s, now, Reason.STEPS_COMPLETED)
    return s, events + more


def _one_step(
    r: Rollout, s: RolloutStatus, obs: Observations, now: float
) -> tuple[RolloutStatus, tuple[Event, ...], bool]:
    """Carry out the current step: the status after it and whether to stop here this cycle."""
    st = r.steps[s.step]
    s, said, hold = gates.confirm_traffic(r, s, obs, now)
    if hold:
        return s, said, True
    nxt = replace(s, step=s.step + 1, step_started=now, step_analysis={})
    if st.set_weight is not None:
        w = min(st.set_weight, r.spec.strategy.canary.max_weight)
        return (
            replace(nxt, traffic=replace(s.traffic, weight=w)),
            (*said, Event(Reason.WEIGHT_CHANGED, f"canary {s.canary} at {w:g} %")),
            False,
        )
    if st.set_flag is not None:
        f = st.set_flag
        e = Event(Reason.FLAG_SET, f"flag {f.name} {'on' if f.enabled else 'off'} at {f.percent:g} % on canary")
        return replace(nxt, flags={**s.flags, f.name: (f.enabled, f.percent)}), (e,), False
    if st.set_header_route is not None:
        hr = st.set_header_route
        e = Event(
            Reason.HEADER_ROUTE_SET, f"requests with {hr.name}{'=' + hr.value if hr.value else ''} go to the canary"
        )
        return replace(nxt, traffic=replace(s.traffic, header_route=(hr.name, hr.value))), (e,), False
    if st.set_mirror is not None:
        e = Event(Reason.MIRROR_SET, f"{st.set_mirror.percent:g} % of stable's traffic mirrored to the canary")
        return replace(nxt, traffic=replace(s.traffic, mirror=st.set_mirror.percent)), (e,), False
    if st.pause is not None:
        assert s.step_started is not None
        if st.pause.duration is None:
            msg = f"step {s.step}: paused until resumed"
            events = (Event(Reason.PAUSED, msg),) if s.phase is not Phase.PAUSED else ()
            return (
                replace(s, phase=Phase.PAUSED, reason=Reason.PAUSE_STEP, message=msg, waiting=Waiting.PAUSE_STEP),
                events,
                True,
            )
        if now - s.step_started < st.pause.duration:
            return replace(s, message=f"step {s.step}: pausing {st.pause.duration:g}s"), (), True
        return nxt, (), False
    assert st.analysis is not None
    checks = {n: r.check(n) for n in st.analysis.checks}
    v = analysis.analysis_verdict(checks, s.step_analysis, background=False)
    judged, said, stop = judge(r, s, v, f"step {s.step}", now=now)
    if stop:
        return (replace(judged, message=f"step {s.step}: analysing") if v is Verdict.RUNNING else judged), said, True
    passed = Event(Reason.ANALYSIS_SUCCESSFUL, f"step {s.step}: {', '.join(st.analysis.checks)} passed")
    return nxt, (*said, passed), False
