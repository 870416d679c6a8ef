"""Execute a decision's actions against the ports, once per cycle.

Runtime actions (processes, traffic, flags) come first and must succeed before the status is
saved; events and registry aliases follow the save and are best effort (a failure is logged and
the aliases are set again on the next transition).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from controller import ports
from controller.plan.actions import (
    Action,
    CallGate,
    EnsureRevision,
    Event,
    SetAliases,
    SetFlags,
    SetTraffic,
    StopRevision,
)
from controller.spec.rollout import Rollout

log = logging.getLogger("modship.execute")


def runtime(actions: tuple[Action, ...], target: ports.Target) -> None:
    """Processes, then flags, then traffic (a revision must run before traffic reaches it)."""
    for a in actions:
        if isinstance(a, EnsureRevision):
            target.ensure(a.revision, a.role)
    for a in actions:
        if isinstance(a, SetFlags):
            target.flags(a.revision, a.flags)
    for a in actions:
        if isinstance(a, SetTraffic):
            target.route(a)
    for a in actions:
        if isinstance(a, StopRevision):
            target.stop(a.revision)


def after_save(
    actions: tuple[Action, ...],
    *,
    record: Callable[[Event], None],
    aliases: Callable[[SetAliases], None] | None,
) -> None:
    for a in actions:
        if isinstance(a, Event):
            record(a)
            (log.warning if a.warning else log.info)("%s: %s", a.reason, a.message)
        elif isinstance(a, SetAliases) and aliases is not None:
            try:
                aliases(a)
            except Exception as exc:  # the registry is advisory here: never block a rollback on it
                log.warning("could not move registry aliases: %s", exc)


def call_gates(actions: tuple[Action, ...], r: Rollout, gates: ports.Gates) -> None:
    """Tell post-rollout gates the outcome; their answer is logged, never acted on."""
    by_name = {g.name: g for g in r.spec.gates}
    for a in actions:
        if isinstance(a, CallGate) and a.gate in by_name:
            ok, why = gates.ask(by_name[a.gate], dict(a.payload))
            (log.info if ok else log.warning)("post-rollout gate %s: %s", a.gate, why)
