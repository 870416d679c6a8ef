"""Observe: health of the revisions, samples for the checks that are due, answers of the gates due."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from controller import ports
from controller.plan import gates as gate_plan
from controller.plan import rollout as machine
from controller.plan.observations import Controls, GateAnswer, Observations, QueryContext, Sample
from controller.plan.status import RolloutStatus
from controller.spec.rollout import Provider, Rollout


def observe(
    r: Rollout,
    s: RolloutStatus,
    controls: Controls,
    *,
    target: ports.Target,
    sources: Mapping[Provider, ports.MetricsSource],
    now: float,
    reference: Callable[[str], dict[str, Any] | None] = lambda rev: None,
    gates: ports.Gates | None = None,
) -> Observations:
    canary = candidate(r, s)
    health = target.health(s.stable, canary)
    samples: dict[str, Sample] = {}
    if s.in_flight and s.canary is not None and s.stable is not None:
        windows = machine.windows(r, s, now)
        for name in machine.due_checks(r, s, now):
            check = r.check(name)
            source = sources.get(check.provider)
            if source is None:
                samples[name] = Sample(value=None, error=f"no {check.provider.value} metrics provider configured")
                continue
            ctx = QueryContext(
                system=r.spec.system,
                revision=s.canary,
                stable_revision=s.stable,
                window_s=windows.get(name, (check.window, True))[0],
                namespace=r.metadata.namespace,
                reference=reference(s.canary),
            )
            samples[name] = source.sample(check, ctx)
    answers: dict[str, GateAnswer] = {}
    if gates is not None:
        for g in gate_plan.due(r, s, canary_ready=health.canary_ready):
            ok, why = gates.ask(g, gate_plan.payload(r, s, g))
            answers[g.name] = GateAnswer(ok, s.step, why)
    return Observations(health=health, samples=samples, controls=controls, gates=answers)


def candidate(r: Rollout, s: RolloutStatus) -> str | None:
    """The revision that is or is about to be the canary."""
    if s.in_flight:
        return s.canary
    if r.spec.revision is not None and r.spec.revision != s.stable:
        return r.spec.revision
    return None
