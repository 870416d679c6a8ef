"""The Rollout CustomResourceDefinition, generated from the pydantic models: one source for the schema.

``spec`` is :class:`~controller.spec.rollout.RolloutBody`; ``status`` is :class:`CRStatus` below, the
summary the operator writes next to the state machine's own persisted status (``machine``). The
JSON Schema pydantic produces becomes a Kubernetes *structural* schema: every ``$ref`` inlined,
``Optional`` written as the plain type (an absent field, never ``null``), no defaults (the API server
would write them into every object, and a server-side apply would then differ from what was sent),
``const`` as a one-value ``enum``, JSON Schema's numeric ``exclusiveMinimum`` in OpenAPI v3.0's
boolean form, free-form objects as ``x-kubernetes-preserve-unknown-fields``. Constraints only the
API server checks (a name pattern, one key per step) ride on the models as ``json_schema_extra``.

``tools/crd.py`` writes :func:`crd_yaml` into the chart; a unit test fails when the two differ. Pure.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field

from controller.spec.base import Spec
from controller.spec.rollout import RolloutBody

GROUP = "modship.dev"
VERSION = "v1alpha1"
CHART_PATH = "charts/modship/crds/rollouts.modship.dev.yaml"
HEADER = (
    "# The Rollout custom resource: how a new revision of a modship System replaces the stable one.\n"
    "# The operator drives the same pure state machine as the local runtime (controller/plan/rollout.py).\n"
    "# Generated from the pydantic models by tools/crd.py (controller/spec/crd.py): do not edit by hand.\n"
)
# plan.status.Phase, and Failed: the operator's word for a spec it cannot run.
CRPhase = Literal["Idle", "Progressing", "Paused", "Promoted", "Aborted", "Failed"]
LAST_EVENTS = 20


class Condition(Spec):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})


class EventRecord(Spec):
    name: str
    reason: str
    message: str | None = None
    type: Literal["Normal", "Warning"] | None = None


class CRStatus(Spec):
    """What the operator reports on the Rollout: a summary for people and printer columns, and the
    state machine's status it resumes from after a restart."""

    observed_generation: int | None = None
    phase: CRPhase | None = None
    reason: str | None = None
    message: str | None = None
    step: int | None = None
    weight: float | None = None
    stable_revision: str | None = None
    canary_revision: str | None = None
    previous_revision: str | None = None
    conditions: list[Condition] | None = None
    machine: dict[str, Any] | None = Field(
        default=None, description="the state machine's persisted status (what a restarted operator resumes from)"
    )
    last_events: list[EventRecord] | None = Field(
        default=None,
        max_length=LAST_EVENTS,
        description="the Kubernetes Events of the last transition, by name: a restarted operator posts any it "
        "had not posted yet (the names make posting them idempotent)",
    )


# -- JSON Schema -> structural OpenAPI v3 ------------------------------------------------------------

_DROP = frozenset({"title", "default"})
_ORDER = (
    "type",
    "description",
    "required",
    "minProperties",
    "maxProperties",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "enum",
    "pattern",
    "format",
    "minLength",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "minItems",
    "maxItems",
    "items",
    "additionalProperties",
    "properties",
)


def openapi(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s schema as a Kubernetes structural schema (wire names, no ``$ref``)."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    defs = schema.pop("$defs", {})
    out: dict[str, Any] = _structural(schema, defs)
    return out


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}  # the field's own description wins over the model's docstring
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o != {"type": "null"}]
        if len(options) != 1:
            raise ValueError(f"no structural form for a union of {options}")
        node = {**options[0], **node}
        return _structural(node, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        elif key == "additionalProperties":
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif value is not False:
                out[key] = _structural(value, defs)
        else:
            out[key] = value
    if out.get("type") == "object" and not out.get("properties") and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "description" in out:
        out["description"] = " ".join(out["description"].replace("``", "`").split())
    return {k: out[k] for k in sorted(out, key=lambda k: (_ORDER.index(k) if k in _ORDER else len(_ORDER), k))}


# -- the CRD ----------------------------------------------------------------------------------------


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition of ``rollouts.modship.dev``."""
    column = [
        ("Phase", "string", ".status.phase", 0),
        ("Step", "integer", ".status.step", 0),
        ("Weight", "number", ".status.weight", 0),
        ("Stable", "string", ".status.stableRevision", 0),
        ("Canary", "string", ".status.canaryRevision", 1),
        ("Reason", "string", ".status.reason", 1),
        ("Age", "date", ".metadata.creationTimestamp", 0),
    ]
    schema = {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": openapi(RolloutBody),
            "status": openapi(CRStatus),
        },
    }
    version = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "subresources": {"status": {}},
        "additionalPrinterColumns": [
            {"name": n, "type": t, "jsonPath": p, **({"priority": pr} if pr else {})} for n, t, p, pr in column
        ],
        "schema": {"openAPIV3Schema": schema},
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"rollouts.{GROUP}", "labels": {"app.kubernetes.io/part-of": "modship"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": "Rollout",
                "listKind": "RolloutList",
                "plural": "rollouts",
                "singular": "rollout",
                "shortNames": ["mro"],
                "categories": ["modship"],
            },
            "versions": [version],
        },
    }


# -- text -------------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block style, sequences under their key; small leaf mappings and lists of scalars on one line."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _flat(value: Any) -> bool:
    return not isinstance(value, dict | list) or (
        isinstance(value, list) and all(not isinstance(v, dict | list) for v in value)
    )


def _dict(dumper: yaml.SafeDumper, data: dict[str, Any]) -> yaml.MappingNode:
    short = len(json.dumps(data)) <= 90 and all(_flat(v) for v in data.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=short)


def _list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.SequenceNode:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=all(_flat(v) for v in data))


_Dumper.add_representer(dict, _dict)
_Dumper.add_representer(list, _list)


def crd_yaml() -> str:
    """The chart's CRD file, byte for byte."""
    return HEADER + yaml.dump(crd(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
