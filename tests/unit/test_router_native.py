"""The router's compiled modules (``controller.adapters.router.native``): loaded only when built
from exactly the sources beside them, and the Python router unchanged without them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from controller.adapters.router import native, server

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the compiled modules' sources, and an empty cache."""
    here = tmp_path / "src"
    here.mkdir()
    for name in native.COMPILED:
        shutil.copy(native.HERE / f"{name}.py", here / f"{name}.py")
    monkeypatch.setattr(native, "HERE", here)
    monkeypatch.setenv("MODSHIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MODSHIP_NO_EXTENSIONS", raising=False)
    monkeypatch.delenv("MODSHIP_NATIVE", raising=False)  # (set in the operator image)
    return here


def test_the_key_follows_every_compiled_source(sources: Path) -> None:
    keys = {native.key()}
    for name in native.COMPILED:
        with (sources / f"{name}.py").open("a") as f:
            f.write("\n")
        keys.add(native.key())
    assert len(keys) == len(native.COMPILED) + 1


def test_only_a_complete_build_of_these_sources_goes_first_on_the_path(
    sources: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = Path(os.environ["MODSHIP_CACHE"]) / "native"
    (cache / "0123456789abcdef0123" / native.DONE).parent.mkdir(parents=True)
    (cache / "0123456789abcdef0123" / native.DONE).write_text("other sources\n")
    assert native.extend(["src"]) == ["src"]  # a build of other sources
    mine = cache / native.key()
    (mine / native.PACKAGE).mkdir(parents=True)
    assert native.extend(["src"]) == ["src"]  # not complete
    (mine / native.DONE).write_text(native.key() + "\n")
    _without_builds(monkeypatch)
    (mine / f"{native.GROUP}.py").write_text("")  # a group module that loads
    assert native.extend(["src"]) == [str(mine / native.PACKAGE), "src"]
    monkeypatch.setenv("MODSHIP_NO_EXTENSIONS", "1")
    assert native.extend(["src"]) == ["src"]  # turned off


def _without_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's own build out of sight: neither loaded nor on the path."""
    monkeypatch.delitem(sys.modules, native.GROUP, raising=False)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not Path(p, f"{native.GROUP}{suffix}").exists()])


def test_a_build_that_does_not_load_leaves_the_python_router(
    sources: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """E.g. a build shipped into an image whose interpreter lacks a symbol it needs."""
    mine = Path(os.environ["MODSHIP_CACHE"]) / "native" / native.key()
    (mine / native.PACKAGE).mkdir(parents=True)
    (mine / native.DONE).write_text(native.key() + "\n")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    (mine / f"{native.GROUP}{suffix}").write_bytes(b"not an ELF object")
    _without_builds(monkeypatch)
    before = list(sys.path)
    with caplog.at_level("WARNING"):
        assert native.extend(["src"]) == ["src"]
    assert sys.path == before and "does not load" in caplog.text


def test_a_shipped_build_is_looked_for_where_modship_native_says(
    sources: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODSHIP_NATIVE", str(tmp_path / "shipped"))
    shipped = tmp_path / "shipped" / native.key()
    (shipped / native.PACKAGE).mkdir(parents=True)
    (shipped / native.DONE).write_text(native.key() + "\n")
    assert native.built() == shipped


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler: nothing is built")
@pytest.mark.skipif(bool(os.environ.get("MODSHIP_NO_EXTENSIONS")), reason="compiled modules turned off")
def test_the_router_runs_compiled_where_a_compiler_is() -> None:
    assert native.built() is not None, "no build of the router's sources: `make native` builds it"
    assert Path(server.__file__ or "").suffix == ".so", server.__file__


@pytest.mark.slow
def test_the_router_runs_its_python_without_them_and_passes_its_unit_tests() -> None:
    tests = sorted(str(p) for p in (REPO / "tests" / "unit").glob("test_router_*.py") if p.name != Path(__file__).name)
    env = os.environ | {"MODSHIP_NO_EXTENSIONS": "1"}
    probe = "from controller.adapters.router import server; print(server.__file__)"
    where = subprocess.run([sys.executable, "-c", probe], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    assert where.stdout.strip().endswith("server.py")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:]
