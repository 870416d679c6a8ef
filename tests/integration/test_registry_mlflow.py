"""The Registry port on a real MLflow server (SQLite backend, proxied artifacts)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.mlflow_registry import MlflowRegistry
from controller.errors import IntegrityError, NotFound, Unavailable
from controller.registry import bundle
from controller.spec.refs import ModuleRef, parse
from tests.conftest import Cli
from tests.support import modules
from tests.support.services import MlflowServer, free_port

pytestmark = pytest.mark.slow


def unique(name: str, request: pytest.FixtureRequest) -> str:
    return f"{name}-{abs(hash(request.node.nodeid)) % 10**8}"


def module_dir(tmp_path: Path, name: str, *, seed: int = 0, space: str = "all-minilm-l6-v2") -> Path:
    return modules.write(tmp_path / f"{name}-{seed}", modules.head_manifest(name, space=space), seed=seed)


def test_register_list_show_alias_deprecate_verify(cli: Cli, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    name = unique("head", request)
    d1, d2 = module_dir(tmp_path, name, seed=1), module_dir(tmp_path, name, seed=2)
    r = cli.ok("module", "register", str(d1), str(d2), "-o", "json")
    assert [v["version"] for v in json.loads(r.out)] == [1, 2]

    listed = json.loads(cli.ok("module", "list", "-o", "json").out)
    assert [(v["name"], v["version"]) for v in listed if v["name"] == name] == [(name, 1), (name, 2)]

    cli.ok("module", "alias", f"{name}@1", "stable")
    shown = json.loads(cli.ok("module", "show", f"{name}@stable", "-o", "json").out)
    assert shown["version"] == 1 and shown["aliases"] == ["stable"] and shown["role"] == "head"
    assert shown["contract"]["inputs"]["embedding"]["space"] == "all-minilm-l6-v2"
    assert shown["metadata"]["calibration"]["ece"] == 0.03
    assert shown["metadata"]["provenance"]["parents"] == ["text-encoder@1"]
    assert set(shown["files"]) == {"module.yaml", "head.npz", "stats.json", "MLmodel"}
    assert shown["digest"].startswith("sha256:")
    table = cli.ok("module", "show", f"{name}@1").out
    assert "all-minilm-l6-v2" in table and "stable" in table

    cli.ok("module", "deprecate", f"{name}@2", "--after", "2020-01-01")
    assert json.loads(cli.ok("module", "show", f"{name}@2", "-o", "json").out)["deprecation"] == "2020-01-01"
    cli.ok("module", "deprecate", f"{name}@2", "--clear")
    assert json.loads(cli.ok("module", "show", f"{name}@2", "-o", "json").out)["deprecation"] is None

    assert "ok" in cli.ok("module", "verify", f"{name}@1").out
    cli.ok("module", "alias", name, "stable", "--delete")
    gone = cli("module", "show", f"{name}@stable")
    assert gone.code == 3 and "does not exist" in gone.err


def test_a_flipped_byte_fails_verify_naming_the_file(
    cli: Cli, mlflow_server: MlflowServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    name = unique("tamper", request)
    cli.ok("module", "register", str(module_dir(tmp_path, name)))
    stored = [p for p in (mlflow_server.root / "artifacts").rglob("head.npz")]
    shown = json.loads(cli.ok("module", "show", f"{name}@1", "-o", "json").out)
    run_id = shown["source"].split("/")[-3]  # mlflow-artifacts:/<exp>/<run>/artifacts/module
    [target] = [p for p in stored if run_id in p.parts]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    r = cli("module", "verify", f"{name}@1")
    assert r.code == 4
    assert "head.npz" in r.err and "digest mismatch" in r.err
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1


class FailAfterCreate(MlflowRegistry):
    def _after_create(self, created: Any) -> None:
        raise RuntimeError("injected failure after the version was created")


def test_failure_mid_registration_leaves_nothing_resolvable(
    mlflow_server: MlflowServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    name = unique("atomic", request)
    ok = MlflowRegistry(mlflow_server.url)
    broken = FailAfterCreate(mlflow_server.url)
    with pytest.raises(RuntimeError, match=r"injected"):
        broken.register(bundle.load(module_dir(tmp_path, name, seed=1)))
    assert name not in ok.modules()  # the model it created is gone too
    with pytest.raises(NotFound):
        ok.resolve(parse(name))

    ok.register(bundle.load(module_dir(tmp_path, name, seed=2)))
    with pytest.raises(RuntimeError):
        broken.register(bundle.load(module_dir(tmp_path, name, seed=3)))
    assert [v.version for v in ok.versions(name)] == [1]  # an existing model keeps its good versions
    with pytest.raises(NotFound):
        ok.resolve(ModuleRef(name, version=2))


def test_failure_while_uploading_leaves_no_version(
    mlflow_server: MlflowServer, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("upload", request)
    reg = MlflowRegistry(mlflow_server.url)

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full (injected)")

    monkeypatch.setattr(reg._client, "log_artifacts", boom)
    with pytest.raises(Unavailable):
        reg.register(bundle.load(module_dir(tmp_path, name)))
    assert name not in MlflowRegistry(mlflow_server.url).modules()


def test_the_same_files_registered_twice_get_the_same_digest(
    mlflow_server: MlflowServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The MLmodel file the registry adds carries no creation time: a module's digest (and so every
    revision pinning it, and its image) follows from its files alone."""
    reg = MlflowRegistry(mlflow_server.url)
    first = reg.register(bundle.load(module_dir(tmp_path, unique("same-a", request))))
    name = first.name
    again = reg.register(bundle.load(module_dir(tmp_path / "again", name)))
    assert again.version == first.version + 1
    assert (again.digest, again.files) == (first.digest, first.files)
    other = reg.register(bundle.load(module_dir(tmp_path, name, seed=5)))
    assert other.digest != first.digest  # other weights, another digest


def test_deprecation_dates_and_effective_deprecation(
    mlflow_server: MlflowServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    name = unique("dep", request)
    reg = MlflowRegistry(mlflow_server.url)
    mv = reg.register(bundle.load(module_dir(tmp_path, name)))
    reg.deprecate(name, mv.version, dt.date(2030, 5, 1))
    got = reg.resolve(parse(f"{name}@1"))
    assert got.deprecation == dt.date(2030, 5, 1)
    assert not got.deprecated(dt.date(2030, 5, 1)) and got.deprecated(dt.date(2030, 5, 2))


def test_unreachable_mlflow_is_one_clear_line(tmp_path: Path) -> None:
    cli = Cli(home=tmp_path, registry=f"http://127.0.0.1:{free_port()}")
    r = cli("module", "list", timeout=60)
    assert r.code == 6
    assert "unreachable" in r.err and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1


def test_fetch_detects_tampering_in_memory_of_remote(
    mlflow_server: MlflowServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    name = unique("fetch", request)
    reg = MlflowRegistry(mlflow_server.url)
    mv = reg.register(bundle.load(module_dir(tmp_path, name)))
    local = reg.fetch(mv, tmp_path / "copy")
    assert (local / "head.npz").exists() and (local / "MLmodel").exists()
    forged = type(mv)(
        **{**{f: getattr(mv, f) for f in mv.__dataclass_fields__}, "files": {**mv.files, "head.npz": "0" * 64}}
    )
    with pytest.raises(IntegrityError, match=r"head\.npz"):
        reg.fetch(forged, tmp_path / "copy2")
