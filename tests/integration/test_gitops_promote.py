"""``modship promote --gitops`` end to end on the real example modules: the next revision composed from
the lock kept in the tree, checked and contract-tested, written into rollout.yaml and the ConfigMap
with the people's comments kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controller.adapters.memory import MemoryRegistry
from controller.apply import gitops, modules, promotion
from controller.compose import manifests, revision
from controller.errors import ModshipError
from controller.spec import system as system_spec
from tests.support import examples

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SYSTEM = REPO / "examples" / "systems" / "topic-classifier.yaml"
ROLLOUT = REPO / "examples" / "rollouts" / "topic-classifier.yaml"


@pytest.fixture(scope="module")
def registry() -> MemoryRegistry:
    root, _ = examples.build()
    reg = MemoryRegistry()
    modules.register(reg, [root / n for n in examples.ORDER])
    return reg


def test_promote_in_a_rendered_tree(registry: MemoryRegistry, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    lock, _, _ = promotion.checked_lock(registry, system_spec.load(SYSTEM), cache=cache)
    revision.write(lock, tmp_path / "topic-classifier.lock.yaml")
    tree = tmp_path / "deploy"
    gitops.render(
        tree, ROLLOUT, system=tmp_path / "topic-classifier.lock.yaml", image="registry.example.com/topic-classifier"
    )
    cm = tree / manifests.CONFIGMAP_FILE
    cm.write_text(cm.read_text().replace("data:\n", "data:  # kept by the platform team\n", 1))
    rollout_before = (tree / manifests.ROLLOUT_FILE).read_text()

    done = gitops.promote_in_tree(
        registry, tree, "topic-classifier", ["topic-head@2"], spec=None, force=False, cache=cache
    )

    assert done["revision"] != lock.revision and done["changes"] == ["head: topic-head@1 -> topic-head@2"]
    rollout = (tree / manifests.ROLLOUT_FILE).read_text()
    assert yaml.safe_load(rollout)["spec"]["revision"] == done["revision"]
    assert yaml.safe_load(rollout)["spec"]["modules"] == ["topic-head@2"]
    assert rollout.replace(done["revision"], lock.revision).replace("  modules: [topic-head@2]\n", "") == (
        rollout_before
    )
    cm_text = cm.read_text()
    assert cm_text.startswith(manifests.HEADER) and "data:  # kept by the platform team\n" in cm_text
    doc = yaml.safe_load(cm_text)
    assert doc["metadata"]["labels"]["modship.dev/revision"] == done["revision"]
    new_lock = yaml.safe_load(doc["data"]["lock.yaml"])
    assert new_lock["revision"] == done["revision"] and "topic-head@2" in new_lock["modules"]
    steps = yaml.safe_load(doc["data"]["system.yaml"])["spec"]["steps"]
    assert next(s for s in steps if s["name"] == "head")["module"] == "topic-head@2"


def test_promote_refuses_an_incompatible_module_and_writes_nothing(registry: MemoryRegistry, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    lock, _, _ = promotion.checked_lock(registry, system_spec.load(SYSTEM), cache=cache)
    revision.write(lock, tmp_path / "sys.lock.yaml")
    tree = tmp_path / "deploy"
    gitops.render(tree, ROLLOUT, system=tmp_path / "sys.lock.yaml", image="registry.example.com/topic-classifier")
    before = {p.name: p.read_bytes() for p in tree.iterdir()}
    # text-encoder@2 embeds in another space: topic-head@1 cannot read it
    with pytest.raises(ModshipError, match="embedding space"):
        gitops.promote_in_tree(
            registry, tree, "topic-classifier", ["text-encoder@2"], spec=None, force=False, cache=cache
        )
    assert {p.name: p.read_bytes() for p in tree.iterdir()} == before


def test_a_configmap_that_cannot_be_edited_leaves_the_rollout_alone(registry: MemoryRegistry, tmp_path: Path) -> None:
    tree = tmp_path / "deploy"
    gitops.render(tree, SYSTEM, rollout=ROLLOUT, image="registry.example.com/topic-classifier")
    (tree / manifests.CONFIGMAP_FILE).write_text("data: [unclosed\n")
    before = {p.name: p.read_bytes() for p in tree.iterdir()}
    spec = tmp_path / "system.yaml"
    spec.write_text(SYSTEM.read_text().replace("module: topic-head@1", "module: topic-head@2", 1))
    with pytest.raises(ModshipError, match="invalid YAML"):
        gitops.promote_in_tree(
            registry, tree, "topic-classifier", ["topic-head@2"], spec=spec, force=False, cache=tmp_path / "cache"
        )
    assert {p.name: p.read_bytes() for p in tree.iterdir()} == before
