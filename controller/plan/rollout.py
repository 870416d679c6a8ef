"""The rollout state machine: one pure function.

    decision = rollout.step(spec, status, observations, now)

It never reads a clock, a file or the network: ``now`` and ``observations`` come in, a new status,
the actions to apply and when to be called again come out. Both runtimes (local processes and
Kubernetes) drive this same function. ``due_checks`` tells the caller which checks to measure
before calling ``step``. A rollout in flight is moved by ``progress``; the big transitions are in
``transitions``; the vocabulary (reasons, what a rollout waits for) in ``reasons``.

Invariants (property-tested): the canary weight never exceeds ``maxWeight``; a failed analysis
always ends at 100 % stable; an inconclusive analysis never promotes; replaying a persisted status
with the same inputs gives the same decision.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

from controller.plan import gates, progress, schedule, transitions
from controller.plan.actions import Action, EnsureRevision, Event, SetAliases, SetFlags, SetTraffic, StopRevision
from controller.plan.observations import Controls, Observations
from controller.plan.reasons import Reason, Waiting
from controller.plan.status import HistoryEntry, Phase, RolloutStatus, Traffic
from controller.spec.rollout import Check, Rollout

HEALTH_POLL = 1.0
APPROVAL_POLL = 5.0  # approvals on Kubernetes are objects nobody wakes the operator for: look again this often
MAX_REQUEUE = 30.0

due_checks = schedule.due_checks
windows = schedule.windows


@dataclass(frozen=True, slots=True)
class Decision:
    status: RolloutStatus
    actions: tuple[Action, ...]
    requeue_after: float | None


def spec_hash(r: Rollout) -> str:
    """What, when changed mid-rollout, restarts the rollout at step 0 (not the pause switch)."""
    body = r.spec.model_dump(mode="json", by_alias=True, exclude={"paused"})
    for added in ("gates", "loadTest"):  # fields added later: absent, they leave the hash as it was
        if not body.get(added):
            body.pop(added, None)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def step(r: Rollout, s: RolloutStatus, obs: Observations, now: float) -> Decision:
    target = r.spec.revision
    h = spec_hash(r)
    if s.stable is None:
        return _initialize(r, s, target, h, now)
    mark = s.handled_controls
    events: tuple[Event, ...] = ()
    restart = s.spec_hash != h and not obs.held  # a refused edit's other changes restart nothing
    if target is not None and target != s.stable and (s.canary != target or restart):
        if target == s.previous_stable:
            return _finish(r, *transitions.instant_rollback(s, target, h, now), now)
        if not (s.phase is Phase.ABORTED and s.canary == target and s.spec_hash == h):
            s, events = transitions.start(s, target, h, now=now)
    elif target == s.stable and s.in_flight:
        s, events = transitions.abort(s, Reason.TARGET_REVERTED, f"the target is stable {s.stable} again", now)
    elif target == s.stable and s.spec_hash != h:
        s = replace(s, spec_hash=h)
    c = obs.controls
    more: tuple[Event, ...] = ()
    if s.in_flight:
        s, more = progress.progress(r, s, obs, now)
    elif s.phase is Phase.ABORTED and progress.is_new(c.retry, s) and target is not None and target == s.canary:
        s, started = transitions.start(replace(s, handled_controls=c.latest()), target, h, now=now)
        s, more = progress.progress(r, s, obs, now)
        more = started + more
    s = replace(s, handled_controls=progress.handled(c, s, max(mark, s.handled_controls)))
    return _finish(r, s, events + more, now)


def _initialize(r: Rollout, s: RolloutStatus, target: str | None, h: str, now: float) -> Decision:
    if target is None:
        return Decision(s, (), None)
    s = replace(
        s,
        phase=Phase.IDLE,
        stable=target,
        spec_hash=h,
        reason=Reason.INITIALIZED,
        message=f"{target} is the first revision: stable at once (nothing to compare it with)",
        history=s.remember(HistoryEntry(target, "Initial", now)),
    )
    return _finish(r, s, (Event(Reason.INITIALIZED, s.message),), now, aliases=True)


# -- actions and requeue ---------------------------------------------------------------------------


def _finish(r: Rollout, s: RolloutStatus, events: tuple[Event, ...], now: float, *, aliases: bool = False) -> Decision:
    stable = s.stable
    assert stable is not None
    p = r.spec.policies
    actions: list[Action] = [EnsureRevision(stable, "stable")]
    in_flight = s.in_flight
    if s.canary is not None and in_flight:
        actions.append(EnsureRevision(s.canary, "canary"))
        actions.append(SetFlags(s.canary, tuple((n, e, pct) for n, (e, pct) in sorted(s.flags.items()))))
    elif s.phase is Phase.ABORTED and s.canary is not None:
        actions.append(StopRevision(s.canary))
    expired = s.previous_stable is not None and s.promoted_at is not None and now >= s.promoted_at + p.rollback_window
    if s.previous_stable is not None and not expired:
        actions.append(EnsureRevision(s.previous_stable, "previous"))
    elif s.previous_stable is not None and expired:
        why = f"{s.previous_stable} stopped ({p.rollback_window:g}s after promotion)"
        events += (Event(Reason.ROLLBACK_WINDOW_CLOSED, why),)
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
    if aliases or any(e.reason.moves_aliases for e in events):
        actions.append(SetAliases(stable=stable, canary=s.canary if in_flight else None))
    actions.extend(events)
    actions.extend(gates.after(r, s, events))
    return Decision(s, tuple(actions), _requeue(r, s, now))


def _requeue(r: Rollout, s: RolloutStatus, now: float) -> float | None:
    times: list[float] = []
    if s.in_flight:
        times.extend(schedule.schedule(r, s).values())
        if s.waiting is not None and s.waiting.poll_soon:
            times.append(now + HEALTH_POLL)
        if s.waiting is Waiting.GATE:
            times.append(now + gates.interval(r))
        if s.waiting is Waiting.APPROVAL:
            times.append(now + APPROVAL_POLL)
    if s.in_flight and s.phase is Phase.PROGRESSING:
        times.append(now + MAX_REQUEUE)
        if s.step < len(r.steps):
            st = r.steps[s.step]
            if st.pause is not None and st.pause.duration is not None and s.step_started is not None:
                times.append(s.step_started + st.pause.duration)
        if s.step_started is not None and s.waiting not in (Waiting.GATE, Waiting.GATE_ASK):  # no deadline at a gate
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
