"""A module directory on disk, ready to register: its manifest checked against its files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from controller.errors import SpecError
from controller.registry import digests, requirements
from controller.spec import parse
from controller.spec.modules import ModuleManifest

MANIFEST = "module.yaml"


@dataclass(frozen=True, slots=True)
class Bundle:
    root: Path
    manifest: ModuleManifest
    files: dict[str, str]

    @property
    def digest(self) -> str:
        return digests.combined(self.files)


def load(root: Path) -> Bundle:
    """Read ``root/module.yaml`` and check every file it names exists inside ``root``."""
    if not root.exists():
        raise SpecError("module directory not found", source=str(root))
    if not root.is_dir():
        raise SpecError("expected a module directory holding module.yaml", source=str(root))
    manifest_path = root / MANIFEST
    if not manifest_path.exists():
        raise SpecError(f"no {MANIFEST} in the module directory", source=str(root))
    manifest = parse.load(ModuleManifest, manifest_path)
    _check_files(root, manifest, source=str(manifest_path))
    manifest = _with_model_requirements(root, manifest, source=str(manifest_path))
    return Bundle(root=root, manifest=manifest, files=digests.manifest(root))


def _check_files(root: Path, manifest: ModuleManifest, *, source: str) -> None:
    named = [(f"runtime.files.{k}", v) for k, v in manifest.runtime.files.items()]
    if manifest.runtime.entrypoint:
        named.append(("runtime.entrypoint", manifest.runtime.entrypoint.partition(":")[0]))
    if manifest.metadata.input_statistics:
        named.append(("metadata.inputStatistics", manifest.metadata.input_statistics))
    if manifest.golden:
        named.append(("golden.file", manifest.golden.file))
    resolved_root = root.resolve()
    for field, rel in named:
        path = (root / rel).resolve()
        if not path.is_relative_to(resolved_root):
            raise SpecError(f"{rel!r} points outside the module directory", field=field, source=source)
        if not (path.is_file() or (field.startswith("runtime.files.") and path.is_dir())):
            raise SpecError(f"missing artifact file {rel!r}", field=field, source=source)


def _with_model_requirements(root: Path, manifest: ModuleManifest, *, source: str) -> ModuleManifest:
    """An MLflow model lists its requirements in ``requirements.txt``: they become the module's,
    unless the manifest declares its own."""
    rt = manifest.runtime
    if rt.kind != "mlflow" or rt.requirements or "model" not in rt.files:
        return manifest
    path = root / rt.files["model"] / "requirements.txt"
    if not path.is_file():
        return manifest
    try:
        reqs = requirements.parse_file(path.read_text())
    except ValueError as exc:
        raise SpecError(f"{path.name}: {exc}", field="runtime.requirements", source=source) from None
    return manifest.model_copy(update={"runtime": rt.model_copy(update={"requirements": reqs})})
