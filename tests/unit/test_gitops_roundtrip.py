"""``promote --gitops`` edits people's files: comments, key order, quoting and layout survive."""

from __future__ import annotations

import datetime as dt
import difflib
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.apply import gitops
from controller.compose import revision, roundtrip, validate
from controller.spec import system as system_spec
from tests.support import modules

REV = "r0123456789ab"
TODAY = dt.date(2026, 1, 1)

# Four-space indentation, kind before apiVersion, system after strategy, odd dash spacing, comments
# on every kind of line, a quoted string.
UNUSUAL = """\
# Topics canary: owned by the ML platform team.
kind: Rollout        # kind first, on purpose
apiVersion: modship.dev/v1alpha1
metadata:
    name: topics
spec:
    strategy:
        canary:
            steps:
                -   setWeight: 20   # a fifth first
                -   pause: {duration: 30s}
    system: topic-classifier   # the system
    # how it runs
    workload:
        image: 'registry.example.com/topic'   # single-quoted on purpose
# end of file
"""

WITH_MODULES = """\
apiVersion: modship.dev/v1alpha1
kind: Rollout
metadata: {name: topics}
spec:
  system: topic-classifier
  revision: "r111111111111"   # quoted by hand
  modules:
    - text-encoder@1
    - topic-head@1    # the head we started with
  # the workload follows
  workload: {image: x}
  strategy: {canary: {steps: [{setWeight: 20}]}}
"""


def diff(before: str, after: str) -> tuple[list[str], list[str]]:
    lines = list(difflib.ndiff(before.splitlines(), after.splitlines()))
    return [d[2:] for d in lines if d.startswith("- ")], [d[2:] for d in lines if d.startswith("+ ")]


def promote(tmp_path: Path, text: str, mods: list[str]) -> str:
    path = tmp_path / "rollout.yaml"
    path.write_text(text)
    gitops.promote_gitops(tmp_path, "topic-classifier", REV, mods)
    return path.read_text()


def test_unusual_layout_keeps_every_byte_but_the_new_fields(tmp_path: Path) -> None:
    after = promote(tmp_path, UNUSUAL, ["text-encoder@2", "text-adapter@1"])
    removed, added = diff(UNUSUAL, after)
    assert removed == []
    # inserted right after system, indented like their siblings; "# how it runs" stays with workload
    assert added == [f"    revision: {REV}", "    modules: [text-encoder@2, text-adapter@1]"]
    assert after.index("# the system\n    revision:") < after.index("# how it runs\n    workload:")
    assert list(yaml.safe_load(after)) == ["kind", "apiVersion", "metadata", "spec"]
    assert list(yaml.safe_load(after)["spec"]) == ["strategy", "system", "revision", "modules", "workload"]


def test_a_block_list_is_replaced_and_the_comments_around_it_stay(tmp_path: Path) -> None:
    after = promote(tmp_path, WITH_MODULES, ["text-encoder@2", "text-adapter@1", "topic-head@1"])
    removed, added = diff(WITH_MODULES, after)
    assert removed == ['  revision: "r111111111111"   # quoted by hand', "    - text-encoder@1"]
    assert added == [f'  revision: "{REV}"   # quoted by hand', "    - text-encoder@2", "    - text-adapter@1"]
    assert "    - topic-head@1    # the head we started with\n  # the workload follows\n  workload:" in after
    # the flow-style strategy line is kept as written
    assert "  strategy: {canary: {steps: [{setWeight: 20}]}}\n" in after


def test_emptying_a_block_list_keeps_the_comment_lines_after_it(tmp_path: Path) -> None:
    after = promote(tmp_path, WITH_MODULES, [])
    assert "  modules: []" in after
    assert "  # the workload follows\n  workload: {image: x}\n" in after
    assert yaml.safe_load(after)["spec"]["modules"] == []


def test_a_flow_style_document_keeps_its_header_comment(tmp_path: Path) -> None:
    text = (
        "# reviewed\n{apiVersion: modship.dev/v1alpha1, kind: Rollout, metadata: {name: topics}, spec: {system: "
        "topic-classifier, workload: {image: x}, strategy: {canary: {steps: [{setWeight: 20}]}}}}\n"
    )
    after = promote(tmp_path, text, ["text-encoder@2"])
    assert after.startswith("# reviewed\n")
    assert yaml.safe_load(after)["spec"] == {
        "system": "topic-classifier",
        "revision": REV,
        "modules": ["text-encoder@2"],
        "workload": {"image": "x"},
        "strategy": {"canary": {"steps": [{"setWeight": 20}]}},
    }


def test_promoting_the_same_values_again_writes_nothing(tmp_path: Path) -> None:
    once = promote(tmp_path, UNUSUAL, ["text-encoder@2"])
    path = tmp_path / "rollout.yaml"
    stamp = path.stat().st_mtime_ns
    gitops.promote_gitops(tmp_path, "topic-classifier", REV, ["text-encoder@2"])
    assert path.read_text() == once and path.stat().st_mtime_ns == stamp


def lock_for() -> revision.Lock:
    versions = modules.versions()
    system = system_spec.from_document(modules.system_doc(modules.STANDARD_STEPS))
    return revision.pin(system, validate.check(system, versions.__getitem__, today=TODAY).resolved)


def test_the_configmap_keeps_its_comments_and_gets_the_new_lock(tmp_path: Path) -> None:
    lock = lock_for()
    cm = tmp_path / "configmap.yaml"
    cm.write_text(
        "# our ConfigMap\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: sys-system\n"
        "  labels:\n    team: ml   # who to call\n    modship.dev/revision: r111111111111\n"
        "data:\n  notes.txt: keep me   # not modship's\n  lock.yaml: |\n    old: lock\n"
    )
    gitops.update_configmap(cm, lock.system, lock)
    text = cm.read_text()
    assert text.startswith("# our ConfigMap\n") and "team: ml   # who to call" in text
    assert "notes.txt: keep me   # not modship's" in text
    doc: dict[str, Any] = yaml.safe_load(text)
    assert doc["metadata"]["labels"] == {"team": "ml", "modship.dev/revision": lock.revision}
    assert revision.is_lock(yaml.safe_load(doc["data"]["lock.yaml"]))
    assert yaml.safe_load(doc["data"]["lock.yaml"])["revision"] == lock.revision
    assert yaml.safe_load(doc["data"]["system.yaml"])["metadata"]["name"] == "sys"
    assert "  lock.yaml: |" in text  # multi-line values stay readable blocks


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1   # one\nb: [x, y]\n", "a: 2   # one\nb: [x, y]\n"),
        ("a:\n    - x\nb:\n  - y  # why\n", "a:\n    - x\nb:\n  - y  # why\nc: 3\n"),
    ],
)
def test_edit_changes_only_what_it_is_asked_to(text: str, expected: str) -> None:
    def change(doc: Any) -> None:
        if "c" in expected:
            doc["c"] = 3
        else:
            doc["a"] = 2

    assert roundtrip.edit(text, change) == expected


def test_a_comment_line_after_system_stays_with_the_key_below_it(tmp_path: Path) -> None:
    text = (
        "apiVersion: modship.dev/v1alpha1\nkind: Rollout\nmetadata: {name: topics}\nspec:\n"
        "  system: topic-classifier\n  # note about the workload\n  workload: {image: x}\n"
        "  strategy: {canary: {steps: [{setWeight: 20}]}}\n"
    )
    after = promote(tmp_path, text, ["text-encoder@2"])
    assert after == text.replace(
        "  system: topic-classifier\n",
        f"  system: topic-classifier\n  revision: {REV}\n  modules: [text-encoder@2]\n",
    )
