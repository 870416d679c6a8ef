"""Checking a System against module versions: every edge, with step, field and reason."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from typing import Any

import pytest

from controller.compose import revision, validate
from controller.errors import SpecError
from controller.spec import system as system_spec
from tests.support import modules

TODAY = dt.date(2026, 11, 26)
VERSIONS = modules.versions()


def resolve(ref: str) -> Any:
    if "@" not in ref:
        ref = max((r for r in VERSIONS if r.startswith(ref + "@")), key=lambda r: int(r.split("@")[1]))
    return VERSIONS.get(ref) or f"{ref} does not exist"


def check(steps: list[dict[str, Any]], **spec: Any) -> validate.Report:
    system = system_spec.from_document(modules.system_doc(steps, output="head", **spec))
    return validate.check(system, resolve, today=TODAY)


def steps(**changes: dict[str, Any]) -> list[dict[str, Any]]:
    out = copy.deepcopy(modules.STANDARD_STEPS)
    for s in out:
        s.update(changes.get(s["name"], {}))
    return out


def test_a_compatible_system_has_no_violations() -> None:
    r = check(steps())
    assert r.ok, r.violations
    assert [(e.step, e.port, e.producer, e.consumer) for e in r.edges] == [
        ("guard", "text", "input.text", "guard@1"),
        ("encoder", "text", "guard@1", "enc@1"),
        ("head", "embedding", "enc@1", "head@1"),
        ("evaluator", "probs", "head@1", "conf@1"),
    ]


def test_the_encoder_swap_is_refused_with_step_and_reason() -> None:
    r = check(steps(encoder={"module": "enc@2"}))
    [v] = r.violations
    assert v.step == "head" and v.field == "steps[2].inputs.embedding"
    assert "enc@2 -> head@1" in v.reason and "space" in v.reason and modules.L3 in v.reason


def test_the_swap_with_its_adapter_is_accepted() -> None:
    r = check(
        steps(
            encoder={"module": "enc@2"},
            head={"inputs": {"embedding": {"from": "encoder.embedding", "adapter": "align@1"}}},
        )
    )
    assert r.ok, r.violations
    assert r.edges[2].adapter == "align@1"


def test_every_problem_is_reported() -> None:
    r = check(
        steps(
            encoder={"module": "enc@2"},  # space mismatch into head
            evaluator={"module": "missing@1"},  # does not exist
            head={"module": "old@1", "fallback": {"module": "other@1"}},  # deprecated; bad fallback
        )
    )
    fields = {(v.step, v.field) for v in r.violations}
    assert ("encoder", "steps[1].module") not in fields
    assert ("head", "steps[2].module") in fields  # deprecated
    assert ("head", "steps[2].inputs.embedding") in fields  # space
    assert ("evaluator", "steps[3].module") in fields  # missing
    assert ("head", "steps[2].fallback.module") in fields  # label set
    assert len(r.violations) >= 4


def test_deprecation_is_checked_against_today() -> None:
    r = check(steps(head={"module": "old@1"}))
    assert any("deprecated since 2020-01-01" in v.reason for v in r.violations)


def test_experimental_module_in_a_stable_system_needs_an_allow() -> None:
    assert any("experimental" in v.reason for v in check(steps(head={"module": "head@3"})).violations)
    assert check(steps(head={"module": "head@3"}), allowExperimental=["head"]).ok
    assert check(steps(head={"module": "head@3"}), stability="experimental").ok


def test_adapter_must_have_the_adapter_role_and_fit() -> None:
    r = check(steps(head={"inputs": {"embedding": {"from": "encoder.embedding", "adapter": "head@2"}}}))
    assert any("role head, expected adapter" in v.reason for v in r.violations)
    r = check(steps(head={"inputs": {"embedding": {"from": "encoder.embedding", "adapter": "align@1"}}}))
    assert any("adapter input" in v.reason for v in r.violations)  # enc@1 is already in L6


def test_ports_must_exist_and_be_wired() -> None:
    r = check(steps(head={"inputs": {"vector": "encoder.embedding"}}))
    reasons = " ".join(v.reason for v in r.violations)
    assert "no input port 'vector'" in reasons and "'embedding' of head@1 is not wired" in reasons
    r = check(steps(head={"inputs": {"embedding": "encoder.nope"}}))
    assert any("no output port 'nope'" in v.reason for v in r.violations)


def test_default_fallback_must_match_outputs() -> None:
    r = check(steps(head={"fallback": {"default": {"scores": [0.2] * 5}}}))
    assert any("missing ['probs']" in v.reason for v in r.violations)
    assert check(steps(head={"fallback": {"default": {"probs": [0.2] * 5}}})).ok


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda s: s[1]["inputs"].update(text="nowhere.text"), "spec.steps[1].inputs.text"),
        (lambda s: s[1]["inputs"].update(text="input.image"), "spec.steps[1].inputs.text"),
        (lambda s: s[1].update(name="guard"), "spec.steps[1].name"),
        (lambda s: s[0]["inputs"].update(text="encoder.embedding"), "spec.steps"),  # a cycle
        (lambda s: s[3].update(flag="nope"), "spec.steps[3].flag"),
    ],
)
def test_structural_problems_name_the_field(mutate: Any, field: str) -> None:
    st = steps()
    mutate(st)
    with pytest.raises(SpecError) as info:
        system_spec.from_document(modules.system_doc(st))
    assert field in str(info.value)


def test_lock_pins_refs_and_the_revision_names_the_content(tmp_path: Any) -> None:
    system = system_spec.from_document(modules.system_doc(steps(head={"module": "head"}), output="head"))
    r = validate.check(system, resolve, today=TODAY)
    lock = revision.pin(system, r.resolved)
    assert lock.requested["head"] == "head@3"
    assert lock.system.spec.step("head").module == "head@3"
    path = tmp_path / "sys.lock.yaml"
    revision.write(lock, path)
    again = revision.load(path)
    assert again.revision == lock.revision and again.revision.startswith("r")
    assert again.labels()["modship.dev/module.head"] == "3"
    other = revision.pin(system, {**r.resolved, "head": VERSIONS["head@2"]})
    assert other.revision != lock.revision
    path.write_text(path.read_text().replace("head@3", "head@2"))
    with pytest.raises(SpecError, match="does not match its content"):
        revision.load(path)


def test_requirement_conflicts_name_the_step_and_both_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    def needs(ref: str, *reqs: str) -> Any:
        mv = VERSIONS[ref]
        runtime = mv.manifest.runtime.model_copy(update={"requirements": reqs})
        return dataclasses.replace(mv, manifest=mv.manifest.model_copy(update={"runtime": runtime}))

    pinned = {**VERSIONS, "enc@1": needs("enc@1", "numpy==1.26.4"), "head@1": needs("head@1", "numpy==2.4.6")}
    monkeypatch.setitem(globals(), "VERSIONS", pinned)
    found = [v for v in check(steps()).violations if v.kind == "requirements"]
    assert len(found) == 1 and found[0].step == "encoder" and found[0].field == "runtime.requirements"
    assert "enc@1" in found[0].reason and "head@1" in found[0].reason and "numpy" in found[0].reason
    pinned["head@1"] = needs("head@1", "numpy>=1.20")
    assert not [v for v in check(steps()).violations if v.kind == "requirements"]
