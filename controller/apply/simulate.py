"""Dry run of a Rollout: the real state machine and reconcile path on in-memory adapters, in
virtual time, with every check answering as told. Shows how long a rollout takes and what it does
before any traffic is touched (``modship simulate``). The caller gives it the in-memory adapters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from controller import ports
from controller.apply import reconcile
from controller.plan.actions import Event, SetTraffic
from controller.plan.observations import QueryContext, Sample
from controller.plan.status import Phase
from controller.spec.rollout import Check, Provider, Rollout

STABLE, CANARY = "r000000000000", "r111111111111"


Answer = Callable[[Check, QueryContext], Sample]


class Store(ports.RolloutStore, Protocol):
    """A store the dry run writes the rollout into."""

    rollouts: dict[str, Rollout]


class Target(ports.Target, Protocol):
    """A target that shows the traffic it was last told."""

    traffic: SetTraffic | None


@dataclass(frozen=True)
class Tick:
    at: float
    event: Event
    weight: float


def run(r: Rollout, *, store: Store, target: Target, metrics: Callable[[Answer], ports.MetricsSource],
        failing: frozenset[str] = frozenset(), fail_after: float = 0.0,
        horizon: float = 7200.0) -> tuple[list[Tick], Phase, float]:  # fmt: skip
    """Simulate until the rollout ends (or ``horizon`` seconds) on an empty ``store`` and ``target``,
    with checks read from ``metrics(answer)``: they pass, except those named in ``failing`` once
    ``fail_after`` seconds have passed. Returns the timeline, the final phase, the time."""
    spec = r.spec.model_copy(update={"revision": STABLE, "paused": False})
    store.rollouts[r.name] = r.model_copy(update={"spec": spec})
    t0 = 0.0

    def answer(check: Check, ctx: QueryContext) -> Sample:
        bad = check.name in failing and now - t0 >= fail_after
        lo, hi = check.threshold.min, check.threshold.max
        good = lo if lo is not None else (hi if hi is not None else 0.0)
        value = (hi + 1.0 if hi is not None else (lo or 0.0) - 1.0) if bad else good
        stable = 0.0 if check.threshold.relative_to == "stable" else None
        return Sample(value=value, stable=stable, samples=max(check.min_samples, 1))

    sources = dict.fromkeys(Provider, metrics(answer))
    ticks: list[Tick] = []
    now = 0.0
    reconcile.reconcile_once(r.name, store=store, target=target, sources=sources, now=now)
    store.rollouts[r.name] = r.model_copy(update={"spec": spec.model_copy(update={"revision": CANARY})})
    t0 = now
    phase = Phase.PROGRESSING
    while now <= horizon:

        def record(e: Event, at: float = now) -> None:
            ticks.append(Tick(at, e, target.traffic.weight if target.traffic else 0.0))

        d = reconcile.reconcile_once(r.name, store=store, target=target, sources=sources, now=now, record=record)
        phase = d.status.phase
        if phase in (Phase.PROMOTED, Phase.ABORTED) or (phase is Phase.PAUSED and d.requeue_after is None):
            break
        now += d.requeue_after if d.requeue_after is not None else 1.0
    return ticks, phase, now
