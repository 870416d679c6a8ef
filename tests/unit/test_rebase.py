"""Composing the next revision from a running system and module versions (what promote does)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controller.compose.rebase import rebase
from controller.errors import SpecError
from controller.spec import system as system_spec
from tests.support import modules

VERSIONS = modules.versions()


def resolve(ref: str) -> Any:
    return VERSIONS[ref]


def base(**changes: dict[str, Any]) -> system_spec.System:
    steps = copy.deepcopy(modules.STANDARD_STEPS)
    for s in steps:
        s.update(changes.get(s["name"], {}))
    return system_spec.from_document(modules.system_doc(steps, output="head"))


def test_versions_are_swapped_in_place() -> None:
    new, notes = rebase(base(), ["head@2"], resolve)
    assert new.spec.step("head").module == "head@2"
    assert notes == ["head: head@1 -> head@2"]


def test_a_fallback_on_the_same_module_stays_the_last_good_version() -> None:
    new, _ = rebase(base(head={"fallback": {"module": "head@2"}}), ["head@3"], resolve)
    head = new.spec.step("head")
    assert head.module == "head@3" and head.fallback is not None and head.fallback.module == "head@2"


def test_an_adapter_is_inserted_on_the_edge_it_bridges() -> None:
    new, notes = rebase(base(), ["enc@2", "align@1"], resolve)
    wired = new.spec.step("head").wired()["embedding"]
    assert wired.adapter == "align@1" and new.spec.step("encoder").module == "enc@2"
    assert "head.embedding: inserted adapter align@1" in notes


def test_an_adapter_no_longer_needed_is_dropped() -> None:
    swapped = base(encoder={"module": "enc@2"},
                   head={"inputs": {"embedding": {"from": "encoder.embedding", "adapter": "align@1"}}})  # fmt: skip
    new, notes = rebase(swapped, ["enc@1"], resolve)
    assert new.spec.step("head").wired()["embedding"].adapter is None
    assert any("dropped" in n for n in notes)


def test_without_its_adapter_the_swap_is_left_incompatible_for_validation_to_refuse() -> None:
    new, _ = rebase(base(), ["enc@2"], resolve)
    assert new.spec.step("head").wired()["embedding"].adapter is None


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ([], "at least one"),
        (["head"], "needs a version"),
        (["head@2", "head@3"], "named twice"),
        (["other@1"], "not an adapter"),
        (["align@1"], "bridges no edge"),
    ],
)
def test_bad_requests(changes: list[str], needle: str) -> None:
    with pytest.raises(SpecError, match=needle):
        rebase(base(), changes, resolve)
