from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from controller.adapters.memory import MemoryRegistry
from controller.apply import modules as usecases
from controller.errors import IntegrityError, NotFound
from controller.registry import bundle
from controller.spec.refs import parse
from tests.support import modules


def test_register_resolve_alias_deprecate_fetch(tmp_path: Path) -> None:
    reg = MemoryRegistry()
    v1 = reg.register(bundle.load(modules.write(tmp_path / "a", seed=1)))
    v2 = reg.register(bundle.load(modules.write(tmp_path / "b", seed=2)))
    assert (v1.version, v2.version) == (1, 2)
    assert reg.resolve(parse("topic-head")).version == 2
    reg.set_alias("topic-head", "stable", 1)
    assert reg.resolve(parse("topic-head@stable")).aliases == ("stable",)
    reg.deprecate("topic-head", 1, dt.date(2026, 1, 1))
    assert reg.resolve(parse("topic-head@1")).deprecated(dt.date(2026, 1, 2))
    out = reg.fetch(v1, tmp_path / "fetched")
    assert (out / "head.npz").read_bytes() == (tmp_path / "a" / "head.npz").read_bytes()
    with pytest.raises(NotFound):
        reg.resolve(parse("topic-head@9"))
    with pytest.raises(NotFound):
        reg.resolve(parse("topic-head@canary"))


def test_tampered_bytes_fail_verification(tmp_path: Path) -> None:
    reg = MemoryRegistry()
    reg.register(bundle.load(modules.write(tmp_path / "a")))
    usecases.verify(reg, "topic-head@1")
    reg.tamper("topic-head", 1, "head.npz")
    with pytest.raises(IntegrityError, match=r"head\.npz"):
        usecases.verify(reg, "topic-head@1")


def test_skip_existing_and_materialize(tmp_path: Path) -> None:
    reg = MemoryRegistry()
    d = modules.write(tmp_path / "a")
    [first] = usecases.register(reg, [d], skip_existing=True)
    [again] = usecases.register(reg, [d], skip_existing=True)
    assert not first.skipped and again.skipped and again.version.version == 1
    local = usecases.materialize(reg, first.version, tmp_path / "cache")
    (local / "stats.json").write_text("damaged")
    assert usecases.materialize(reg, first.version, tmp_path / "cache") == local
    assert (local / "stats.json").read_text() != "damaged"


def test_bad_directory_registers_nothing(tmp_path: Path) -> None:
    reg = MemoryRegistry()
    good = modules.write(tmp_path / "good")
    bad = modules.write(tmp_path / "bad")
    (bad / "head.npz").unlink()
    with pytest.raises(Exception, match="missing artifact"):
        usecases.register(reg, [good, bad])
    assert reg.modules() == []
