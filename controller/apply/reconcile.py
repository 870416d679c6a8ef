"""reconcile_once: observe -> plan -> execute -> save the status, once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from controller import ports
from controller.apply import execute, observe
from controller.plan import rollout as machine
from controller.plan.actions import Event, SetAliases
from controller.plan.governance import Release
from controller.plan.observations import Observations
from controller.plan.status import RolloutStatus
from controller.spec.rollout import Provider, Rollout

BeforeSave = Callable[[Rollout, RolloutStatus, Observations, machine.Decision], None]
Notify = Callable[[Rollout, RolloutStatus, machine.Decision, float], None]
log = logging.getLogger("modship.reconcile")


def reconcile_once(
    system: str,
    *,
    store: ports.RolloutStore,
    target: ports.Target,
    sources: Mapping[Provider, ports.MetricsSource],
    now: float,
    record: Callable[[Event], None] = lambda e: None,
    aliases: Callable[[SetAliases], None] | None = None,
    reference: Callable[[str], dict[str, Any] | None] = lambda rev: None,
    before_save: BeforeSave | None = None,
    notify: Notify | None = None,
    gates: ports.Gates | None = None,
    release: Callable[[RolloutStatus], Release | None] = lambda s: None,
    admit: Callable[[Rollout, RolloutStatus], Rollout] = lambda r, s: r,
) -> machine.Decision:
    """One cycle. ``before_save`` sees the rollout, the status before, the observations and the
    decision once its runtime actions are done and before the status is saved (the operator stages
    the cycle's Events into the status it saves, and measures the cycle). ``notify`` sees the
    rollout, the status before and the decision once it is saved; it must not block (a sender
    enqueues), and its failure never fails the cycle. ``gates`` asks the webhook gates that are due
    (without it, a rollout with gates holds at the first one). ``admit`` is the rollout as the
    governance policy lets it run (the operator's: a refused new target is not started)."""
    r, s, controls = store.load(system)
    asked = r.spec.revision
    r = admit(r, s)
    obs = observe.observe(r, s, controls, target=target, sources=sources, now=now, reference=reference, gates=gates)
    obs = replace(obs, release=release(s), held=r.spec.revision != asked)  # governance: approvals, soak, refusals
    decision = machine.step(r, s, obs, now)
    execute.runtime(decision.actions, target)
    if before_save is not None:
        before_save(r, s, obs, decision)
    if decision.status != s:
        store.save(system, decision.status)
    execute.after_save(decision.actions, record=record, aliases=aliases)
    if gates is not None:
        execute.call_gates(decision.actions, r, gates)
    if notify is not None:
        try:
            notify(r, s, decision, now)
        except Exception as exc:  # telling people is best effort: never hold a rollout on it
            log.warning("%s: notifications not sent: %s", system, exc)
    return decision
