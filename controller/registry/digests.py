"""Content digests: SHA-256 of every file in a module directory, and one digest over them all.

The per-file manifest is stored with the version (in the registry's metadata, not beside the
files), so a changed byte in a stored artifact is detected and the file named.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from controller.errors import IntegrityError

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def manifest(root: Path) -> dict[str, str]:
    """``{relative/posix/path: sha256}`` for every regular file under ``root``, sorted."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): file_sha256(p) for p in files}


def combined(files: dict[str, str]) -> str:
    """One digest naming the whole set: ``sha256:`` + hash of the canonical manifest."""
    canonical = json.dumps(dict(sorted(files.items())), separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def verify(root: Path, expected: dict[str, str], *, what: str = "module") -> None:
    """Raise IntegrityError naming the first file that differs, is missing, or is unexpected."""
    actual = manifest(root)
    for rel, digest in sorted(expected.items()):
        if rel not in actual:
            raise IntegrityError(f"{what}: file {rel} is missing", path=rel)
        if actual[rel] != digest:
            raise IntegrityError(
                f"{what}: digest mismatch in {rel}: expected sha256:{digest[:16]}..., "
                f"found sha256:{actual[rel][:16]}...",
                path=rel,
            )
    extra = sorted(set(actual) - set(expected))
    if extra:
        raise IntegrityError(f"{what}: unexpected file {extra[0]} (not registered)", path=extra[0])
