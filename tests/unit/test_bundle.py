"""Module directories: manifests validated with field paths; files checked before registering."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controller.errors import SpecError
from controller.registry import bundle, digests
from tests.support import modules


def rewrite(d: Path, **changes: object) -> None:
    m = yaml.safe_load((d / "module.yaml").read_text())
    for dotted, value in changes.items():
        node = m
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[p]
        if value is None:
            node.pop(last)
        else:
            node[last] = value
    (d / "module.yaml").write_text(yaml.safe_dump(m))


def test_load_computes_a_digest_per_file(tmp_path: Path) -> None:
    b = bundle.load(modules.write(tmp_path / "m"))
    assert set(b.files) == {"module.yaml", "head.npz", "stats.json"}
    assert b.digest == digests.combined(b.files) and b.digest.startswith("sha256:")


@pytest.mark.parametrize(
    ("changes", "field", "needle"),
    [
        ({"role": "decoder"}, "role", "decoder"),
        ({"name": "Bad Name"}, "name", "invalid module name"),
        ({"metadata__license": None}, "metadata.license", "required"),
        ({"metadata__owners": []}, "metadata.owners", "at least 1"),
        ({"metadata__stability": "beta"}, "metadata.stability", "beta"),
        ({"metadata__deprecation": "someday"}, "metadata.deprecation", "date"),
        ({"metadata__calibration__ece": 3}, "metadata.calibration.ece", "less than or equal to 1"),
        ({"contract__inputs": {}}, "contract.inputs", "at least 1"),
        ({"contract__outputs__probs__dtype": "float16"}, "contract.outputs.probs.dtype", "float16"),
        ({"contract__outputs__probs__shape": [-1, 4]}, "contract.outputs.probs", "do not fit"),
        ({"contract__outputs__probs__range": [1, 0]}, "contract.outputs.probs.range", "above"),
        ({"metadata__provenance__parents": ["enc"]}, "metadata.provenance.parents", "needs a version"),
        ({"extra_field": 1}, "extra_field", "unknown field"),
        ({"runtime__files__weights": "missing.npz"}, "runtime.files.weights", "missing artifact file"),
        ({"runtime__files__weights": "../../etc/passwd"}, "runtime.files.weights", "outside"),
        ({"metadata__inputStatistics": "nope.json"}, "metadata.inputStatistics", "missing artifact"),
    ],
)
def test_bad_manifest_names_the_field(tmp_path: Path, changes: dict[str, object], field: str, needle: str) -> None:
    d = modules.write(tmp_path / "m")
    rewrite(d, **changes)
    with pytest.raises(SpecError) as info:
        bundle.load(d)
    assert info.value.field == field, str(info.value)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_not_a_module_directory(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not found"):
        bundle.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match=r"no module\.yaml"):
        bundle.load(tmp_path / "empty")
    (tmp_path / "f").write_text("x")
    with pytest.raises(SpecError, match="module directory"):
        bundle.load(tmp_path / "f")


@pytest.mark.parametrize("text", ["a: [1, 2", "- just\n- a list", "\xff\xfe", "{}"])
def test_malformed_yaml_is_one_clear_error(tmp_path: Path, text: str) -> None:
    d = modules.write(tmp_path / "m")
    (d / "module.yaml").write_bytes(text.encode("latin-1"))
    with pytest.raises(SpecError) as info:
        bundle.load(d)
    assert "module.yaml" in str(info.value)


def test_verify_names_the_changed_file(tmp_path: Path) -> None:
    d = modules.write(tmp_path / "m")
    expected = digests.manifest(d)
    digests.verify(d, expected)
    data = bytearray((d / "head.npz").read_bytes())
    data[100] ^= 1
    (d / "head.npz").write_bytes(bytes(data))
    with pytest.raises(Exception, match=r"digest mismatch in head\.npz") as info:
        digests.verify(d, expected)
    assert info.value.path == "head.npz"  # type: ignore[attr-defined]
    (d / "extra.bin").write_bytes(b"x")
    (d / "head.npz").unlink()
    with pytest.raises(Exception, match=r"head\.npz is missing"):
        digests.verify(d, expected)
