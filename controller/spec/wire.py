"""The Rollout's wire form: the custom resource as Git and the API server hold it.

``spec`` is what the Rollout model dumps (camelCase), with durations written back as people write
them (``30s``, ``5m``; the CRD types them int-or-string) and integral numbers as integers
(``setWeight: 20``, not ``20.0``), so a rendered manifest reads like a hand-written one and the API
server stores exactly what was sent. Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Any

from controller.errors import SpecError
from controller.spec import rollout as rollouts
from controller.spec.rollout import Rollout, Workload

API_VERSION = "modship.dev/v1alpha1"
REVISION = re.compile(r"^r[0-9a-f]{12}$")
DEFAULT_PORT = int(Workload.model_fields["port"].default)  # BentoML's; the operator's Services use the same port
_DURATIONS = (("h", 3600.0), ("m", 60.0), ("s", 1.0))
# The order people read a Rollout in: what, which revision, where it runs, then how.
_FIRST = ("system", "revision", "modules", "paused", "workload", "trafficRouting", "prometheus")


def parse_rollout(doc: Any, *, source: str | None = None) -> Rollout:
    """A Rollout from its wire form. Raises SpecError naming the field."""
    return rollouts.from_document(doc, source=source)


def default_rollout(system: str) -> Rollout:
    """A stepped canary with pauses: what a System gets when no Rollout spec is given."""
    steps: list[dict[str, Any]] = [
        {"setWeight": 10},
        {"pause": {"duration": "2m"}},
        {"setWeight": 50},
        {"pause": {"duration": "5m"}},
    ]
    doc = {"metadata": {"name": system}, "spec": {"system": system, "strategy": {"canary": {"steps": steps}}}}
    return parse_rollout(doc)


def duration(seconds: float) -> str:
    """30.0 -> ``30s``, 120.0 -> ``2m``, 0.25 -> ``250ms``."""
    for unit, size in _DURATIONS:
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{round(seconds * 1000)}ms" if seconds else "0s"


def tidy(value: Any) -> Any:
    """Integral floats as ints, recursively."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: tidy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [tidy(v) for v in value]
    return value


def rollout_spec(r: Rollout, *, semantic: bool = False) -> dict[str, Any]:
    """The wire form of what the spec sets (``semantic``: of what differs from the defaults, the form
    two specs are compared in), keys in reading order."""
    spec: dict[str, Any] = r.spec.model_dump(
        mode="json", by_alias=True, exclude_none=True, exclude_unset=not semantic, exclude_defaults=semantic
    )
    for check, model in zip(spec.get("analysis", {}).get("checks", []), r.spec.analysis.checks, strict=True):
        for key in ("window", "interval"):
            if key in check:
                check[key] = duration(getattr(model, key))
    for step, model_step in zip(spec["strategy"]["canary"]["steps"], r.steps, strict=True):
        if model_step.pause is not None and model_step.pause.duration is not None:
            step["pause"]["duration"] = duration(model_step.pause.duration)
    for key, attr in (("rollbackWindow", "rollback_window"), ("progressDeadline", "progress_deadline")):
        if key in spec.get("policies", {}):
            spec["policies"][key] = duration(getattr(r.spec.policies, attr))
    return ordered(tidy(spec))


def ordered(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with its keys in reading order (see _FIRST), the rest as they came."""
    return {**{k: spec[k] for k in _FIRST if k in spec}, **{k: v for k, v in spec.items() if k not in _FIRST}}


def normal(spec: Any) -> Any:
    """A spec in the form two specs compare in (defaults left out, durations canonical); a spec that
    does not parse as it is."""
    try:
        r = parse_rollout({"metadata": {"name": "x"}, "spec": spec})
    except SpecError:
        return spec
    return rollout_spec(r, semantic=True)
