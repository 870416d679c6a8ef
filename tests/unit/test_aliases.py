"""Registry aliases following a rollout on Kubernetes (from spec.modules), on the in-memory registry."""

from __future__ import annotations

from pathlib import Path

from controller.adapters.memory import MemoryRegistry
from controller.apply import aliases
from controller.plan.actions import SetAliases
from controller.registry import bundle
from controller.spec.refs import parse
from tests.support import modules


def test_canary_then_stable_then_rollback(tmp_path: Path) -> None:
    reg = MemoryRegistry()
    for seed in (1, 2):
        reg.register(bundle.load(modules.write(tmp_path / str(seed), seed=seed)))
    move = aliases.for_changed_modules(reg, "rB", ["topic-head@2"])
    assert move is not None
    move(SetAliases(stable="rA", canary="rB"))
    assert reg.resolve(parse("topic-head@canary")).version == 2
    move(SetAliases(stable="rB", canary=None))  # promoted
    assert reg.resolve(parse("topic-head@stable")).version == 2
    assert "canary" not in reg.resolve(parse("topic-head@2")).aliases
    reg.set_alias("topic-head", "stable", 1)
    move(SetAliases(stable="rA", canary=None))  # rolled back: @stable stays where it was
    assert reg.resolve(parse("topic-head@stable")).version == 1


def test_nothing_to_move_without_versions() -> None:
    assert aliases.for_changed_modules(MemoryRegistry(), "rB", []) is None
    assert aliases.for_changed_modules(MemoryRegistry(), "rB", ["undo to revision 2"]) is None
