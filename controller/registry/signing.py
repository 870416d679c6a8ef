"""Module signatures in the OpenSSF model-signing format (the ``model-signing`` package), key-based
and offline: an elliptic-curve private key signs the SHA-256 manifest of every file in a module
directory; trusted public keys verify it.

The signature lives in the module directory as ``module.sig`` (a Sigstore bundle holding an in-toto
statement of the file digests). It is left out of the files it signs (with the ``MLmodel`` file the
MLflow registry adds at the root), and is itself one of the
module's registered files, so it travels with the module into the registry, the Bento and the
serving process, where each place verifies it again. ``model_signing`` is imported only when a
signature is made or checked (it costs about a second to import).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controller.errors import SpecError
from controller.spec.signing import SigningPolicy

SIGNATURE_FILE = "module.sig"
# The MLflow registry writes its own ``MLmodel`` (the contract as an MLflow signature, made from the
# signed module.yaml) at the root of every version it stores: never part of what an author signs.
UNSIGNED = (SIGNATURE_FILE, "MLmodel")


class SignatureError(SpecError):
    """A module's signature is missing where required, or does not verify (exit 2: refused input)."""

    def __init__(self, message: str, *, what: str) -> None:
        super().__init__(message, field="signature", source=what)


def _hashing() -> Any:
    from model_signing import hashing

    # git paths are files like any other here: modship's own digests cover every file too
    cfg = hashing.Config()  # type: ignore[no-untyped-call]
    return cfg.set_ignored_paths(paths=list(UNSIGNED), ignore_git_paths=False)


def sign(root: Path, key: Path) -> Path:
    """Write ``root/module.sig`` signed with the PEM private key ``key``; the path written."""
    from model_signing import signing

    if not key.is_file():
        raise SpecError("private key file not found", field="--key", source=str(key))
    dest = root / SIGNATURE_FILE
    with tempfile.TemporaryDirectory(prefix="modship-sign-") as tmp:  # nothing half-written in the module
        out = Path(tmp) / SIGNATURE_FILE
        try:
            signer = signing.Config().use_elliptic_key_signer(private_key=key)  # type: ignore[no-untyped-call]
            signer.set_hashing_config(_hashing()).sign(root, out)
        except (ValueError, TypeError) as exc:  # not a PEM key, or not an elliptic-curve one
            raise SpecError(f"cannot sign with this key: {_first_line(exc)}", field="--key", source=str(key)) from None
        shutil.copyfile(out, dest)
    return dest


def signed(root: Path) -> bool:
    return (root / SIGNATURE_FILE).is_file()


def verify(root: Path, keys: Sequence[Path], *, what: str) -> Path:
    """The trusted key the signature verifies with; SignatureError when it is missing or verifies
    with none of ``keys`` (the reason of the first key names a changed, missing or extra file)."""
    from model_signing import verifying

    if not signed(root):
        raise SignatureError(f"not signed (no {SIGNATURE_FILE})", what=what)
    reasons: list[str] = []
    for key in keys:
        if not key.is_file():
            raise SpecError("trusted key file not found", field="trustedKeys", source=str(key))
        cfg = verifying.Config().use_elliptic_key_verifier(public_key=key)  # type: ignore[no-untyped-call]
        cfg = cfg.set_hashing_config(_hashing())
        try:
            cfg.verify(root, root / SIGNATURE_FILE)
            return key
        except (ValueError, TypeError, KeyError, json.JSONDecodeError) as exc:
            reasons.append(_reason(exc))
    raise SignatureError(f"bad signature: {reasons[0] if reasons else 'no trusted key'}", what=what)


def check(root: Path, policy: SigningPolicy, *, what: str) -> Path | None:
    """Apply the policy to one module directory: the key that verified it, or None when the policy
    asks nothing of an unsigned module (or trusts no key)."""
    if not policy.active or (not policy.require_signature and not signed(root)):
        return None
    return verify(root, policy.trusted_keys, what=what)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    changed = re.search(r"Hash mismatch for \\?'([^'\\]+)", text)
    if changed:
        return f"{changed.group(1)} changed since it was signed"
    other = re.search(r"(Extra|Missing) files (?:found )?in model '[^']*': ([^\"'\]]+)", text)
    if other:
        how = "was added" if other.group(1) == "Extra" else "was removed"
        return f"{other.group(2).strip()} {how} since it was signed"
    if isinstance(exc, json.JSONDecodeError | KeyError):
        return f"{SIGNATURE_FILE} is not a signature"
    return _first_line(exc) or type(exc).__name__


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]
