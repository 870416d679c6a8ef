"""Module use cases: register directories, materialise verified copies, compatibility matrices."""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from controller import ports
from controller.errors import IntegrityError, SpecError
from controller.pipeline import kernels
from controller.registry import bundle as bundles
from controller.registry import compat, digests, signing
from controller.registry.versions import ModuleVersion
from controller.spec import refs
from controller.spec.modules import Contract
from controller.spec.signing import SigningPolicy


@dataclass(frozen=True, slots=True)
class Registered:
    version: ModuleVersion
    skipped: bool


def register(
    registry: ports.Registry | Callable[[], ports.Registry],
    dirs: list[Path],
    *,
    skip_existing: bool = False,
    policy: SigningPolicy | None = None,
) -> list[Registered]:
    """Validate every directory first (bad input registers nothing, and fails before any backend is
    contacted), then register each. Register means it works: each module's signature is checked
    against ``policy`` (SignatureError), it is loaded and its golden examples run before anything
    is written."""
    loaded = [bundles.load(d) for d in dirs]
    for b in loaded:
        if policy is not None:
            signing.check(b.root, policy, what=f"{b.manifest.name} ({b.root})")
        probe(b)
    if callable(registry):
        registry = registry()
    out = []
    for b in loaded:
        if skip_existing:
            existing = _existing(registry, b)
            if existing is not None:
                out.append(Registered(existing, skipped=True))
                continue
        out.append(Registered(registry.register(b), skipped=False))
    return out


def probe(b: bundles.Bundle) -> None:
    """Load the module (faults left out) and run its golden examples; SpecError names what fails."""
    source = str(b.root / bundles.MANIFEST)
    try:
        kernel = kernels.load(b.root, b.manifest, faults=False)
        failures = kernels.golden_failures(b.root, b.manifest, kernel)
    except SpecError as exc:
        raise SpecError(exc.reason, field=exc.field, source=source) from None
    if failures:
        raise SpecError("; ".join(failures), field="golden.file", source=source)


def _existing(registry: ports.Registry, b: bundles.Bundle) -> ModuleVersion | None:
    if b.manifest.name not in registry.modules():
        return None
    return next((v for v in registry.versions(b.manifest.name) if v.source_digest == b.digest), None)


def materialize(registry: ports.Registry, mv: ModuleVersion, cache: Path) -> Path:
    """A verified local copy of a version's files (cached by digest; re-fetched if it was altered)."""
    dest = cache / mv.name / f"{mv.version}-{mv.digest.removeprefix('sha256:')[:16]}"
    if dest.exists():
        try:
            digests.verify(dest, mv.files, what=mv.ref)
            return dest
        except IntegrityError:
            pass  # a damaged cache copy: fetch again, and verify what the registry holds
    return registry.fetch(mv, dest)


def verify(
    registry: ports.Registry, ref: str, *, policy: SigningPolicy | None = None
) -> tuple[ModuleVersion, Path | None]:
    """Download the stored files afresh and check every digest (IntegrityError names the file),
    then the signature against ``policy`` (SignatureError); the trusted key that verified it."""
    mv = registry.resolve(refs.parse(ref, field="ref"))
    with tempfile.TemporaryDirectory(prefix="modship-verify-") as tmp:
        root = registry.fetch(mv, Path(tmp) / "module")
        key = signing.check(root, policy, what=mv.ref) if policy is not None else None
    return mv, key


def compat_matrix(registry: ports.Registry, a: str, b: str) -> list[compat.Cell]:
    """All versions of A (or the one named) against all versions of B."""
    return compat.matrix(_versions(registry, a), _versions(registry, b))


def _versions(registry: ports.Registry, text: str) -> list[tuple[str, Contract]]:
    ref = refs.parse(text, field="module")
    chosen = [registry.resolve(ref)] if ref.version or ref.alias else registry.versions(ref.name)
    return [(v.ref, v.manifest.contract) for v in chosen]


def deprecate(registry: ports.Registry, ref: str, after: dt.date | None) -> ModuleVersion:
    mv = registry.resolve(refs.parse(ref, field="ref", require_qualifier=True))
    registry.deprecate(mv.name, mv.version, after)
    return registry.resolve(refs.ModuleRef(mv.name, version=mv.version))
