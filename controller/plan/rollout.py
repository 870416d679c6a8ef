"""The rollout state machine: one pure function.

    decision = rollout.step(spec, status, observations, now)

It never reads a clock, a file or the network: ``now`` and ``observations`` come in, a new status,
the actions to apply and when to be called again come out. Both runtimes (local processes and
Kubernetes) drive this same function. ``due_checks`` tells the caller which checks to measure
before calling ``step``.

Invariants (property-tested): the canary weight never exceeds ``maxWeight``; a failed analysis
always ends at 100 % stable; an inconclusive analysis never promotes; replaying a persisted status
with the same inputs gives the same decision.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

from controller.plan import analysis
from controller.plan.actions import Action, EnsureRevision, Event, SetAliases, SetFlags, SetTraffic, StopRevision
from controller.plan.observations import Controls, Observations
from controller.plan.status import CheckRun, HistoryEntry, Phase, RolloutStatus, Traffic, Verdict
from controller.spec.rollout import Check, MetricsDown, Rollout

HEALTH_POLL = 1.0
MAX_REQUEUE = 30.0


@dataclass(frozen=True, slots=True)
class Decision:
    status: RolloutStatus
    actions: tuple[Action, ...]
    requeue_after: float | None


def spec_hash(r: Rollout) -> str:
    """What, when changed mid-rollout, restarts the rollout at step 0 (not the pause switch)."""
    body = r.spec.model_dump(mode="json", by_alias=True, exclude={"paused"})
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def due_checks(r: Rollout, s: RolloutStatus, now: float) -> list[str]:
    """Names of checks whose next measurement is due at ``now``."""
    return sorted(name for name, at in _schedule(r, s).items() if at <= now)


def windows(r: Rollout, s: RolloutStatus, now: float) -> dict[str, tuple[float, bool]]:
    """For each active check: the window to query (never reaching back before its analysis
    started, so an earlier step's or attempt's traffic cannot decide it) and whether it is full."""
    out: dict[str, tuple[float, bool]] = {}
    starts = [(n, s.step_started) for n in _active_step_checks(r, s)]
    starts += [(n, s.background_started) for n in _active_background(r, s) if n not in dict(starts)]
    for name, since in starts:
        w = r.check(name).window
        age = now - since if since is not None else w
        out[name] = (max(1.0, min(w, age)), age >= w)
    return out


def _active_step_checks(r: Rollout, s: RolloutStatus) -> tuple[str, ...]:
    if s.canary is None or s.phase is not Phase.PROGRESSING or s.step >= len(r.steps):
        return ()
    current = r.steps[s.step].analysis
    return current.checks if current is not None else ()


def _active_background(r: Rollout, s: RolloutStatus) -> tuple[str, ...]:
    bg = r.spec.strategy.canary.analysis
    in_flight = s.phase in (Phase.PROGRESSING, Phase.PAUSED)
    if bg is None or s.canary is None or not in_flight or s.background_started is None:
        return ()
    return bg.checks


def _schedule(r: Rollout, s: RolloutStatus) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in _active_step_checks(r, s):
        c = r.check(name)
        assert s.step_started is not None
        out[name] = analysis.due(c, s.step_analysis.get(name), s.step_started, 0, count=analysis.step_count(c))
    for name in _active_background(r, s):
        assert s.background_started is not None
        at = analysis.due(r.check(name), s.background.get(name), s.background_started, 0, count=None)
        out[name] = min(at, out.get(name, at))
    return out


# -- the function ----------------------------------------------------------------------------------


def step(r: Rollout, s: RolloutStatus, obs: Observations, now: float) -> Decision:
    target = r.spec.revision
    h = spec_hash(r)
    if s.stable is None:
        return _initialize(r, s, target, h, now)
    events: list[Event] = []
    if target is not None and target != s.stable and (s.canary != target or s.spec_hash != h):
        if target == s.previous_stable:
            return _finish(r, _instant_rollback(s, target, h, now, events), events, now)
        if not (s.phase is Phase.ABORTED and s.canary == target and s.spec_hash == h):
            s = _start(r, s, target, h, now=now, events=events)
    elif target == s.stable and s.canary is not None and s.phase in (Phase.PROGRESSING, Phase.PAUSED):
        s = _abort(s, "TargetReverted", f"the target is stable {s.stable} again", now, events)
    elif target == s.stable and s.spec_hash != h:
        s = replace(s, spec_hash=h)
    c = obs.controls
    if s.canary is not None and s.phase in (Phase.PROGRESSING, Phase.PAUSED):
        s = _progress(r, s, obs, now, events)
    elif s.phase is Phase.ABORTED and _new(c.retry, s) and target is not None and target == s.canary:
        s = replace(s, handled_controls=c.latest())
        s = _start(r, s, target, h, now=now, events=events)
        s = _progress(r, s, obs, now, events)
    return _finish(r, replace(s, handled_controls=max(s.handled_controls, c.latest())), events, now)


def _new(at: float | None, s: RolloutStatus) -> bool:
    return at is not None and at > s.handled_controls


def _initialize(r: Rollout, s: RolloutStatus, target: str | None, h: str, now: float) -> Decision:
    if target is None:
        return Decision(s, (), None)
    s = replace(
        s,
        phase=Phase.IDLE,
        stable=target,
        spec_hash=h,
        reason="Initialized",
        message=f"{target} is the first revision: stable at once (nothing to compare it with)",
        history=s.remember(HistoryEntry(target, "Initial", now)),
    )
    events = [Event("Initialized", s.message)]
    return _finish(r, s, events, now, aliases=True)


def _start(r: Rollout, s: RolloutStatus, target: str, h: str, *, now: float, events: list[Event]) -> RolloutStatus:
    if s.canary not in (None, target) and s.phase in (Phase.PROGRESSING, Phase.PAUSED):
        events.append(Event("Superseded", f"{s.canary} is replaced by {target} before finishing", warning=True))
    restart = s.canary == target and s.spec_hash != h
    events.append(
        Event(
            "RolloutRestarted" if restart else "RolloutStarted",
            f"canary {target} against stable {s.stable}" + (" (the rollout spec changed: step 0)" if restart else ""),
        )
    )
    return replace(
        s,
        phase=Phase.PROGRESSING,
        canary=target,
        step=0,
        step_started=now,
        started=now,
        background_started=None,
        traffic=Traffic(),
        flags={},
        step_analysis={},
        background={},
        spec_hash=h,
        reason="RolloutStarted",
        message=f"canary {target} at step 0",
    )


def _abort(s: RolloutStatus, reason: str, message: str, now: float, events: list[Event]) -> RolloutStatus:
    events.append(Event(reason, f"aborted {s.canary}: {message}; 100 % to stable {s.stable}", warning=True))
    entry = HistoryEntry(s.canary or "", "Aborted", now, reason)
    return replace(
        s, phase=Phase.ABORTED, traffic=Traffic(), flags={}, reason=reason, message=message, history=s.remember(entry)
    )


def _promote(r: Rollout, s: RolloutStatus, now: float, events: list[Event], reason: str) -> RolloutStatus:
    assert s.canary is not None
    events.append(Event("Promoted", f"{s.canary} is stable; {s.stable} stays warm for rollback"))
    entry = HistoryEntry(s.canary, "Promoted", now, reason)
    return replace(
        s,
        phase=Phase.PROMOTED,
        previous_stable=s.stable,
        stable=s.canary,
        canary=None,
        step=len(r.steps),
        traffic=Traffic(),
        flags=s.flags,
        promoted_at=now,
        reason=reason,
        message=f"{s.canary} promoted",
        history=s.remember(entry),
    )


def _instant_rollback(s: RolloutStatus, target: str, h: str, now: float, events: list[Event]) -> RolloutStatus:
    events.append(Event("RolledBack", f"back to {target} (kept warm): {s.stable} leaves at once", warning=True))
    if s.canary is not None and s.phase in (Phase.PROGRESSING, Phase.PAUSED):
        events.append(Event("Aborted", f"{s.canary} stopped by the rollback", warning=True))
    return replace(
        s,
        phase=Phase.IDLE,
        previous_stable=s.stable,
        stable=target,
        canary=None,
        traffic=Traffic(),
        flags={},
        promoted_at=now,
        spec_hash=h,
        reason="RolledBack",
        message=f"rolled back to {target}",
        history=s.remember(HistoryEntry(target, "RolledBack", now)),
    )


# -- progressing -----------------------------------------------------------------------------------


def _progress(r: Rollout, s: RolloutStatus, obs: Observations, now: float, events: list[Event]) -> RolloutStatus:
    c = obs.controls
    if _new(c.abort, s):
        return _abort(s, "AbortedByUser", "abort requested", now, events)
    if obs.health.canary_failed:
        return _abort(s, "CanaryFailed", obs.health.canary_failed, now, events)
    if _new(c.promote_full, s):
        if obs.health.canary_ready:
            return _promote(r, s, now, events, "PromotedFull")
        return replace(s, message="promote --full: waiting for the canary to be ready")
    if _new(c.resume, s) and s.phase is Phase.PAUSED:
        s = _resume(r, s, now, events)
    hold = False
    if obs.health.canary_ready:  # background analysis runs through pauses: the canary still serves
        s = _record(r, s, obs, now)
        s, hold = _background(r, s, now, events)
        if s.phase is Phase.ABORTED:
            return s
    if c.paused:
        if s.reason != "PausedByUser":
            events.append(Event("PausedByUser", f"paused at step {s.step}"))
        return replace(s, phase=Phase.PAUSED, reason="PausedByUser", message="paused by user")
    if s.phase is Phase.PAUSED and s.reason == "PausedByUser":
        s = replace(s, phase=Phase.PROGRESSING, reason="Resumed", message="resumed")
    if s.phase is Phase.PAUSED:
        return s  # a pause step or an inconclusive analysis: only resume or abort continue
    deadline = r.spec.policies.progress_deadline
    if s.step_started is not None and now - s.step_started > deadline:
        return _abort(s, "ProgressDeadlineExceeded", f"step {s.step} made no progress for {deadline:g}s", now, events)
    if not obs.health.canary_ready:
        return replace(s, message=f"waiting for canary {s.canary} to be ready")
    if hold:
        return s
    return _advance(r, s, now, events)


def _resume(r: Rollout, s: RolloutStatus, now: float, events: list[Event]) -> RolloutStatus:
    events.append(Event("Resumed", f"resumed at step {s.step}"))
    if s.reason == "AnalysisInconclusive":  # re-run the step's analysis from scratch
        return replace(
            s,
            phase=Phase.PROGRESSING,
            step_started=now,
            step_analysis={},
            reason="Resumed",
            message="resumed: analysis restarts",
        )
    if s.step < len(r.steps) and r.steps[s.step].pause is not None:
        return replace(
            s, phase=Phase.PROGRESSING, step=s.step + 1, step_started=now, reason="Resumed", message="resumed"
        )
    return replace(s, phase=Phase.PROGRESSING, reason="Resumed", message="resumed")


def _record(r: Rollout, s: RolloutStatus, obs: Observations, now: float) -> RolloutStatus:
    due = set(due_checks(r, s, now))
    step_checks, bg_checks = set(_active_step_checks(r, s)), set(_active_background(r, s))
    full = {n: f for n, (_, f) in windows(r, s, now).items()}
    sa, bg = dict(s.step_analysis), dict(s.background)
    for name, sample in sorted(obs.samples.items()):
        if name not in due:
            continue
        m = analysis.measure(r.check(name), sample, now, window_full=full.get(name, True))
        if name in step_checks:
            sa[name] = sa.get(name, CheckRun()).record(m)
        if name in bg_checks:
            bg[name] = bg.get(name, CheckRun()).record(m)
    return replace(s, step_analysis=sa, background=bg)


def _background(r: Rollout, s: RolloutStatus, now: float, events: list[Event]) -> tuple[RolloutStatus, bool]:
    bg = r.spec.strategy.canary.analysis
    if bg is None:
        return s, False
    if s.background_started is None:
        if s.step < bg.starting_step:
            return s, False
        s = replace(s, background_started=now)
    checks = {n: r.check(n) for n in bg.checks}
    verdict = analysis.analysis_verdict(checks, s.background, background=True)
    return _judge(r, s, verdict, "background", now=now, events=events)


def _judge(
    r: Rollout, s: RolloutStatus, v: Verdict, where: str, *, now: float, events: list[Event]
) -> tuple[RolloutStatus, bool]:
    """React to an analysis verdict; True when the rollout must not advance this cycle."""
    match v:
        case Verdict.FAILED:
            return _abort(s, "AnalysisFailed", f"{where} analysis failed", now, events), True
        case Verdict.INCONCLUSIVE:
            events.append(Event("AnalysisInconclusive", f"{where} analysis is inconclusive: paused for a person"))
            return replace(
                s,
                phase=Phase.PAUSED,
                reason="AnalysisInconclusive",
                message=f"{where} analysis inconclusive: resume to retry, or abort",
            ), True
        case Verdict.ERROR:
            if r.spec.policies.metrics_down is MetricsDown.ROLLBACK:
                return _abort(s, "MetricsUnavailable", f"{where} analysis: metrics unavailable", now, events), True
            if s.reason != "MetricsUnavailable":
                events.append(
                    Event("MetricsUnavailable", f"{where} analysis: metrics unavailable: holding", warning=True)
                )
            return replace(
                s, reason="MetricsUnavailable", message=f"holding at step {s.step}: metrics unavailable"
            ), True
        case Verdict.RUNNING:
            return s, where != "background"
        case Verdict.SUCCESSFUL:
            return s, False


def _advance(r: Rollout, s: RolloutStatus, now: float, events: list[Event]) -> RolloutStatus:
    canary = r.spec.strategy.canary
    while s.step < len(r.steps):
        st = r.steps[s.step]
        nxt = replace(s, step=s.step + 1, step_started=now, step_analysis={})
        if st.set_weight is not None:
            w = min(st.set_weight, canary.max_weight)
            events.append(Event("WeightChanged", f"canary {s.canary} at {w:g} %"))
            s = replace(nxt, traffic=replace(s.traffic, weight=w))
        elif st.set_flag is not None:
            f = st.set_flag
            events.append(
                Event("FlagSet", f"flag {f.name} {'on' if f.enabled else 'off'} at {f.percent:g} % on canary")
            )
            s = replace(nxt, flags={**s.flags, f.name: (f.enabled, f.percent)})
        elif st.set_header_route is not None:
            hr = st.set_header_route
            events.append(
                Event("HeaderRouteSet", f"requests with {hr.name}{'=' + hr.value if hr.value else ''} go to the canary")
            )
            s = replace(nxt, traffic=replace(s.traffic, header_route=(hr.name, hr.value)))
        elif st.set_mirror is not None:
            events.append(Event("MirrorSet", f"{st.set_mirror.percent:g} % of stable's traffic mirrored to the canary"))
            s = replace(nxt, traffic=replace(s.traffic, mirror=st.set_mirror.percent))
        elif st.pause is not None:
            assert s.step_started is not None
            if st.pause.duration is None:
                if s.phase is not Phase.PAUSED:
                    events.append(Event("Paused", f"step {s.step}: paused until resumed"))
                return replace(
                    s, phase=Phase.PAUSED, reason="PauseStep", message=f"step {s.step}: paused until resumed"
                )
            if now - s.step_started < st.pause.duration:
                return replace(s, message=f"step {s.step}: pausing {st.pause.duration:g}s")
            s = nxt
        elif st.analysis is not None:
            checks = {n: r.check(n) for n in st.analysis.checks}
            v = analysis.analysis_verdict(checks, s.step_analysis, background=False)
            s, stop = _judge(r, s, v, f"step {s.step}", now=now, events=events)
            if stop:
                return replace(s, message=f"step {s.step}: analysing") if v is Verdict.RUNNING else s
            events.append(Event("AnalysisSuccessful", f"step {s.step}: {', '.join(st.analysis.checks)} passed"))
            s = nxt
        s = replace(s, reason="StepCompleted", message=f"at step {s.step} of {len(r.steps)}")
    return _promote(r, s, now, events, "StepsCompleted")


# -- actions and requeue ---------------------------------------------------------------------------


def _finish(r: Rollout, s: RolloutStatus, events: list[Event], now: float, *, aliases: bool = False) -> Decision:
    stable = s.stable
    assert stable is not None
    p = r.spec.policies
    actions: list[Action] = [EnsureRevision(stable, "stable")]
    in_flight = s.canary is not None and s.phase in (Phase.PROGRESSING, Phase.PAUSED)
    if in_flight:
        assert s.canary is not None
        actions.append(EnsureRevision(s.canary, "canary"))
        actions.append(SetFlags(s.canary, tuple((n, e, pct) for n, (e, pct) in sorted(s.flags.items()))))
    elif s.phase is Phase.ABORTED and s.canary is not None:
        actions.append(StopRevision(s.canary))
    expired = s.previous_stable is not None and s.promoted_at is not None and now >= s.promoted_at + p.rollback_window
    if s.previous_stable is not None and not expired:
        actions.append(EnsureRevision(s.previous_stable, "previous"))
    elif expired:
        assert s.previous_stable is not None
        events.append(
            Event("RollbackWindowClosed", f"{s.previous_stable} stopped ({p.rollback_window:g}s after promotion)")
        )
        actions.append(StopRevision(s.previous_stable))
        s = replace(s, previous_stable=None)
    t = s.traffic if in_flight else Traffic()
    actions.append(
        SetTraffic(
            stable=stable,
            canary=s.canary if in_flight else None,
            weight=t.weight,
            header_route=t.header_route,
            mirror=t.mirror,
            fallback=p.fallback_to_stable,
            sticky_header=p.sticky_header,
            sticky_cookie=p.sticky_cookie,
        )
    )
    if aliases or any(e.reason in _ALIAS_EVENTS for e in events):
        actions.append(SetAliases(stable=stable, canary=s.canary if in_flight else None))
    actions.extend(events)
    return Decision(s, tuple(actions), _requeue(r, s, now, in_flight=in_flight))


_ALIAS_EVENTS = frozenset(
    {
        "Initialized",
        "RolloutStarted",
        "RolloutRestarted",
        "Promoted",
        "PromotedFull",
        "RolledBack",
        "AbortedByUser",
        "AnalysisFailed",
        "CanaryFailed",
        "MetricsUnavailable",
        "ProgressDeadlineExceeded",
        "TargetReverted",
        "Superseded",
    }
)


def _requeue(r: Rollout, s: RolloutStatus, now: float, *, in_flight: bool) -> float | None:
    times: list[float] = []
    if in_flight:
        times.extend(_schedule(r, s).values())
    if in_flight and s.phase is Phase.PROGRESSING:
        times.append(now + HEALTH_POLL if "waiting for canary" in s.message else now + MAX_REQUEUE)
        if s.step < len(r.steps):
            st = r.steps[s.step]
            if st.pause is not None and st.pause.duration is not None and s.step_started is not None:
                times.append(s.step_started + st.pause.duration)
        if s.step_started is not None:
            times.append(s.step_started + r.spec.policies.progress_deadline + 0.001)
    if s.previous_stable is not None and s.promoted_at is not None:
        times.append(s.promoted_at + r.spec.policies.rollback_window)
    if not times:
        return None
    return max(0.0, min(times) - now)


def checks_of(r: Rollout) -> dict[str, Check]:
    return {c.name: c for c in r.spec.analysis.checks}


def controls_default() -> Controls:
    return Controls()
