"""Router telemetry as a check's sample, pure: several routers' snapshots merged into one (replicas
in a cluster), and a snapshot turned into the ``Sample`` a check compares (the ``builtin`` provider,
on one machine and in a cluster)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from controller.errors import SpecError
from controller.plan import telemetry
from controller.plan.observations import QueryContext, Sample
from controller.spec.rollout import BuiltinMetric, Check


def _sum(a: Any, b: Any) -> Any:
    """``a`` and ``b`` (one block's fields) added: numbers summed, count lists element by element,
    label maps key by key; histogram ``edges`` and the ``role`` are the same everywhere: kept."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: b[k] if k not in a else a[k] if k not in b or k in ("edges", "role") else _sum(a[k], b[k])
                for k in {**a, **b}}  # fmt: skip
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [_sum(x, y) for x, y in zip(a, b, strict=True)]
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a + b
    return a


def merge(snapshots: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Snapshots of several routers of one system (replicas in a cluster) as one: each saw its own
    requests, so every count adds up. The newest ``now`` and ``generation`` are kept."""
    if not snapshots:
        raise ValueError("no router answered")
    out: dict[str, Any] = {"revisions": {}}
    for snap in snapshots:
        for key in ("generation", "now"):
            out[key] = max(out.get(key, snap[key]), snap[key])
        out.setdefault("window", snap["window"])
        revisions = out["revisions"]
        for name, block in snap["revisions"].items():
            revisions[name] = _sum(revisions[name], block) if name in revisions else dict(block)
    return out


def metric_of(check: Check) -> BuiltinMetric:
    """The check's built-in metric; a check without one is a spec bug."""
    if check.metric is None:
        raise SpecError(f"check {check.name!r} has no metric for provider builtin", field="metric")
    return check.metric


def to_sample(snapshot: Mapping[str, Any], check: Check, ctx: QueryContext) -> Sample:
    """The figure ``check`` compares, from a telemetry snapshot; an error sample when it cannot be computed."""
    metric = metric_of(check)
    try:
        fig = telemetry.figure(
            snapshot, metric, canary=ctx.revision, stable=ctx.stable_revision, reference=ctx.reference
        )
    except (KeyError, TypeError, ValueError) as exc:
        return Sample(value=None, error=f"cannot compute {metric.value}: {exc!r}")
    return Sample(value=fig.value, stable=fig.stable, samples=fig.samples)
