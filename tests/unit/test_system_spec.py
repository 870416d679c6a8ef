"""System specs: the examples parse; malformed documents only ever raise SpecError with a path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.errors import SpecError, SpecErrors
from controller.spec import system as system_spec
from tests.support import modules

EXAMPLES = sorted((Path(__file__).parents[2] / "examples" / "systems").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_parse(path: Path) -> None:
    s = system_spec.load(path)
    assert s.metadata.name == "topic-classifier"


def test_yaml_booleans_do_not_sneak_in_as_keys() -> None:
    doc = modules.system_doc(copy.deepcopy(modules.STANDARD_STEPS))
    doc["spec"]["steps"][2]["fallback"] = yaml.safe_load("{module: head@2, on: [error]}")
    with pytest.raises(SpecError) as info:
        system_spec.from_document(doc)
    assert "fallback" in str(info.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, (*prefix, i))
    return out


BASE = modules.system_doc(copy.deepcopy(modules.STANDARD_STEPS), flags=[{"name": "f", "percent": 50}], output="head")
PATHS = [p for p in paths(BASE) if p]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(PATHS), st.sampled_from(["delete", "replace"]), json_values), max_size=3))
def test_malformed_specs_only_raise_spec_errors_with_a_path(edits: list[tuple[Any, str, Any]]) -> None:
    doc = copy.deepcopy(BASE)
    for path, op, value in edits:
        node = doc
        try:
            for p in path[:-1]:
                node = node[p]
            if op == "delete":
                del node[path[-1]]
            else:
                node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    try:
        system_spec.from_document(doc)
    except SpecErrors as exc:
        assert all(e.field for e in exc.errors)
    except SpecError as exc:
        assert exc.field, str(exc)
