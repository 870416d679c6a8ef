"""The chart's Rollout CRD is what the pydantic models generate, and a valid structural schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from controller.plan.status import Phase
from controller.spec import crd

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "rollouts" / "topic-classifier.yaml"


def schema() -> dict[str, Any]:
    found: dict[str, Any] = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return found


def nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}{{}}")


def test_the_chart_ships_what_the_models_generate() -> None:
    shipped = (REPO / crd.CHART_PATH).read_text(encoding="utf-8")
    assert shipped == crd.crd_yaml(), "the chart's CRD is stale: run `python tools/crd.py`"


def test_the_schema_is_structural() -> None:
    for path, node in nodes(schema()):
        assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "default", "nullable", "title"} & set(node), path
        free = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        assert "type" in node or free, f"{path} has no type"
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path  # OpenAPI v3.0's form


def test_the_schema_follows_the_models() -> None:
    spec = schema()["properties"]["spec"]
    assert spec["required"] == ["system", "strategy"]
    checks = spec["properties"]["analysis"]["properties"]["checks"]["items"]["properties"]
    for duration in (
        checks["window"],
        checks["interval"],
        spec["properties"]["policies"]["properties"]["rollbackWindow"],
    ):
        assert duration == {"x-kubernetes-int-or-string": True}
    step = spec["properties"]["strategy"]["properties"]["canary"]["properties"]["steps"]["items"]
    assert (step["minProperties"], step["maxProperties"]) == (1, 1)
    assert set(step["properties"]) == {"setWeight", "pause", "analysis", "setFlag", "setHeaderRoute", "setMirror"}
    assert spec["properties"]["trafficRouting"]["maxProperties"] == 1
    assert set(spec["properties"]["trafficRouting"]["properties"]) == {"gatewayAPI", "istio", "nginx", "modship"}
    assert spec["properties"]["revision"]["pattern"] == "^r[0-9a-f]{12}$"
    machine = schema()["properties"]["status"]["properties"]["machine"]
    assert machine["x-kubernetes-preserve-unknown-fields"] is True


def test_every_phase_the_state_machine_has_is_allowed() -> None:
    phases = schema()["properties"]["status"]["properties"]["phase"]["enum"]
    assert {p.value for p in Phase} <= set(phases)


def test_the_example_rollout_uses_only_fields_the_schema_knows() -> None:
    def unknown(doc: Any, node: dict[str, Any], path: str) -> list[str]:
        if node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string"):
            return []
        if node == {"type": "object"}:  # metadata: the API server's own schema
            return []
        if isinstance(doc, dict):
            props, extra = node.get("properties", {}), node.get("additionalProperties")
            out = []
            for key, value in doc.items():
                sub = props.get(key, extra)
                out += [f"{path}.{key}"] if sub is None else unknown(value, sub, f"{path}.{key}")
            return out
        if isinstance(doc, list):
            return [u for i, v in enumerate(doc) for u in unknown(v, node["items"], f"{path}[{i}]")]
        return []

    assert unknown(yaml.safe_load(EXAMPLE.read_text()), schema(), "") == []
