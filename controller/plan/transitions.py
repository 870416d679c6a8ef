"""The rollout's big transitions (start, abort, promote, instant rollback), each returning the new
status and the events it causes. Pure; used by ``rollout`` and ``progress``."""

from __future__ import annotations

from dataclasses import replace

from controller.plan.actions import Event
from controller.plan.reasons import Reason
from controller.plan.status import HistoryEntry, Phase, RolloutStatus, Traffic
from controller.spec.rollout import Rollout

Events = tuple[Event, ...]
Moved = tuple[RolloutStatus, Events]


def start(s: RolloutStatus, target: str, h: str, *, now: float) -> Moved:
    events: Events = ()
    if s.canary not in (None, target) and s.in_flight:
        events += (Event(Reason.SUPERSEDED, f"{s.canary} is replaced by {target} before finishing", warning=True),)
    restart = s.canary == target and s.spec_hash != h
    events += (
        Event(
            Reason.ROLLOUT_RESTARTED if restart else Reason.ROLLOUT_STARTED,
            f"canary {target} against stable {s.stable}" + (" (the rollout spec changed: step 0)" if restart else ""),
        ),
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
        reason=Reason.ROLLOUT_STARTED,
        message=f"canary {target} at step 0",
        waiting=None,
        gates_passed=(),
        gate_failures={},
        decided={},
    ), events


def abort(s: RolloutStatus, reason: Reason, message: str, now: float) -> Moved:
    event = Event(reason, f"aborted {s.canary}: {message}; 100 % to stable {s.stable}", warning=True)
    entry = HistoryEntry(s.canary or "", "Aborted", now, reason.value)
    return replace(
        s,
        phase=Phase.ABORTED,
        traffic=Traffic(),
        flags={},
        reason=reason,
        message=message,
        history=s.remember(entry),
        waiting=None,
    ), (event,)


def promote(r: Rollout, s: RolloutStatus, now: float, reason: Reason) -> Moved:
    assert s.canary is not None
    event = Event(Reason.PROMOTED, f"{s.canary} is stable; {s.stable} stays warm for rollback")
    entry = HistoryEntry(s.canary, "Promoted", now, reason.value)
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
        waiting=None,
    ), (event,)


def instant_rollback(s: RolloutStatus, target: str, h: str, now: float) -> Moved:
    events: Events = (
        Event(Reason.ROLLED_BACK, f"back to {target} (kept warm): {s.stable} leaves at once", warning=True),
    )
    if s.in_flight:
        events += (Event(Reason.ABORTED, f"{s.canary} stopped by the rollback", warning=True),)
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
        reason=Reason.ROLLED_BACK,
        message=f"rolled back to {target}",
        history=s.remember(HistoryEntry(target, "RolledBack", now)),
        waiting=None,
    ), events
