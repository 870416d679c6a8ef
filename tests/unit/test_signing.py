"""Signed modules (OpenSSF model signing, key-based): what verifies, and every refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controller.compose.revision import Lock
from controller.errors import SpecError
from controller.pipeline import serving
from controller.pipeline.engine import module_dir
from controller.registry import bundle as bundles
from controller.registry import digests, signing
from controller.spec import signing as signing_spec
from controller.spec.signing import SigningPolicy
from tests.support import keys, modules


@pytest.fixture
def team(tmp_path: Path) -> tuple[Path, Path]:
    return keys.pair(tmp_path / "keys")


def _signed(tmp_path: Path, team: tuple[Path, Path]) -> Path:
    root = modules.write(tmp_path / "head", modules.head_manifest("signed-head"))
    signing.sign(root, team[0])
    return root


def test_a_signature_verifies_and_travels_with_the_module(tmp_path: Path, team: tuple[Path, Path]) -> None:
    root = _signed(tmp_path, team)
    assert signing.verify(root, [team[1]], what="signed-head") == team[1]
    # the signature is one of the module's registered files; it signs every other file
    assert signing.SIGNATURE_FILE in bundles.load(root).files
    signing.sign(root, team[0])  # signing again ignores the old signature
    assert signing.verify(root, [team[1]], what="signed-head") == team[1]


@pytest.mark.parametrize(
    ("tamper", "needle"),
    [
        (lambda r: (r / "head.npz").write_bytes(b"other weights"), "head.npz changed since it was signed"),
        (lambda r: (r / "extra.py").write_text("import os"), "extra.py was added since it was signed"),
        (lambda r: (r / "stats.json").unlink(), "stats.json was removed since it was signed"),
        (lambda r: (r / signing.SIGNATURE_FILE).write_text("{not json"), "module.sig is not a signature"),
    ],
)
def test_a_tampered_module_is_refused_naming_why(tmp_path: Path, team: tuple[Path, Path], tamper, needle) -> None:  # type: ignore[no-untyped-def]
    root = _signed(tmp_path, team)
    tamper(root)
    with pytest.raises(signing.SignatureError) as err:
        signing.verify(root, [team[1]], what="signed-head@1")
    assert needle in str(err.value) and err.value.exit_code == 2
    assert "\n" not in str(err.value)


def test_an_untrusted_key_is_refused_and_any_trusted_key_will_do(tmp_path: Path, team: tuple[Path, Path]) -> None:
    root = _signed(tmp_path, team)
    _, stranger = keys.pair(tmp_path / "other", "stranger")
    with pytest.raises(signing.SignatureError, match="bad signature: Key mismatch"):
        signing.verify(root, [stranger], what="signed-head")
    assert signing.verify(root, [stranger, team[1]], what="signed-head") == team[1]


def test_the_policy_decides_what_an_unsigned_module_means(tmp_path: Path, team: tuple[Path, Path]) -> None:
    unsigned = modules.write(tmp_path / "plain", modules.head_manifest("plain-head"))
    assert signing.check(unsigned, SigningPolicy(), what="plain-head") is None
    assert signing.check(unsigned, SigningPolicy(trusted_keys=(team[1],)), what="plain-head") is None
    required = SigningPolicy(require_signature=True, trusted_keys=(team[1],))
    with pytest.raises(signing.SignatureError, match="not signed"):
        signing.check(unsigned, required, what="plain-head")
    signed = _signed(tmp_path, team)
    (signed / "head.npz").write_bytes(b"x")  # a bad signature is refused even where none is required
    with pytest.raises(signing.SignatureError, match="changed since it was signed"):
        signing.check(signed, SigningPolicy(trusted_keys=(team[1],)), what="signed-head")


def test_the_policy_file(tmp_path: Path, team: tuple[Path, Path]) -> None:
    assert signing_spec.load(tmp_path / "absent.yaml") == SigningPolicy()
    f = tmp_path / "keys" / "signing.yaml"
    f.write_text(yaml.safe_dump({"requireSignature": True, "trustedKeys": [team[1].name]}))
    assert signing_spec.load(f).trusted_keys == (team[1],)  # relative to the policy file
    f.write_text(yaml.safe_dump({"requireSignature": True}))
    with pytest.raises(SpecError, match="requireSignature needs at least one of trustedKeys"):
        signing_spec.load(f)
    f.write_text(yaml.safe_dump({"requireSignatures": True}))
    with pytest.raises(SpecError, match="requireSignatures"):
        signing_spec.load(f)


def test_signing_needs_a_private_key(tmp_path: Path, team: tuple[Path, Path]) -> None:
    root = modules.write(tmp_path / "head", modules.head_manifest("h"))
    with pytest.raises(SpecError, match="--key: cannot sign with this key"):
        signing.sign(root, team[1])
    with pytest.raises(SpecError, match="--key: private key file not found"):
        signing.sign(root, tmp_path / "nope.pem")
    assert not signing.signed(root)


def test_a_bundle_carrying_the_policy_checks_signatures_at_load(tmp_path: Path, team: tuple[Path, Path]) -> None:
    root = _signed(tmp_path, team)
    b = bundles.load(root)
    bundle = tmp_path / "bundle"
    ref = "signed-head@1"
    dest = module_dir(bundle / serving.MODULES_DIR, ref)
    dest.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(root, dest)
    lock = _lock(ref, b)
    serving.check_signatures(bundle, lock)  # no policy in the bundle: nothing to check
    serving.write_signing(bundle, SigningPolicy(require_signature=True, trusted_keys=(team[1],)))
    serving.check_signatures(bundle, lock)
    (dest / signing.SIGNATURE_FILE).unlink()
    with pytest.raises(signing.SignatureError, match=f"{ref}: signature: not signed"):
        serving.check_signatures(bundle, lock)


def _lock(ref: str, b: bundles.Bundle) -> Lock:
    """A minimal stand-in for a lock: ``check_signatures`` only reads the module refs."""

    class _L:
        modules = {ref: digests.combined(b.files)}

    return _L()  # type: ignore[return-value]


def test_a_build_refuses_an_unsigned_module_before_building(tmp_path: Path, team: tuple[Path, Path]) -> None:
    from controller.adapters import bento

    plain = modules.write(tmp_path / "plain", modules.head_manifest("plain-head"))
    required = SigningPolicy(require_signature=True, trusted_keys=(team[1],))
    home = tmp_path / "bentoml"
    with pytest.raises(signing.SignatureError, match="plain-head@1: signature: not signed"):
        bento.build(None, {"plain-head@1": plain}, bentoml_home=home, policy=required)  # type: ignore[arg-type]
    assert not home.exists()
