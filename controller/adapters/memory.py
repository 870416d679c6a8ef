"""In-memory adapters for every port: real code for unit tests and ``--dry-run``, never a stand-in
for testing a real adapter.
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import replace
from pathlib import Path

from controller.errors import NotFound
from controller.registry import digests
from controller.registry.bundle import Bundle
from controller.registry.versions import ModuleVersion
from controller.spec.refs import ModuleRef


class MemoryRegistry:
    """A registry in a dict. ``fetch`` copies the registered bytes kept in memory."""

    def __init__(self, *, clock: dt.datetime | None = None) -> None:
        self._versions: dict[str, dict[int, ModuleVersion]] = {}
        self._blobs: dict[tuple[str, int], dict[str, bytes]] = {}
        self._aliases: dict[str, dict[str, int]] = {}
        self._clock = clock

    def modules(self) -> list[str]:
        return sorted(self._versions)

    def versions(self, name: str) -> list[ModuleVersion]:
        if name not in self._versions:
            raise NotFound(f"module {name!r} is not registered")
        return [self._with_aliases(v) for _, v in sorted(self._versions[name].items())]

    def resolve(self, ref: ModuleRef) -> ModuleVersion:
        versions = self._versions.get(ref.name)
        if not versions:
            raise NotFound(f"module {ref.name!r} is not registered")
        if ref.version is not None:
            if ref.version not in versions:
                raise NotFound(f"{ref} does not exist (versions: {sorted(versions)})")
            return self._with_aliases(versions[ref.version])
        if ref.alias is not None:
            number = self._aliases.get(ref.name, {}).get(ref.alias)
            if number is None:
                raise NotFound(f"{ref}: no such alias")
            return self._with_aliases(versions[number])
        return self._with_aliases(versions[max(versions)])

    def register(self, bundle: Bundle) -> ModuleVersion:
        name = bundle.manifest.name
        existing = self._versions.setdefault(name, {})
        number = max(existing, default=0) + 1
        blobs = {rel: (bundle.root / rel).read_bytes() for rel in bundle.files}
        mv = ModuleVersion(
            name=name,
            version=number,
            manifest=bundle.manifest,
            digest=bundle.digest,
            files=dict(bundle.files),
            source=f"memory://{name}/{number}",
            created=self._clock or dt.datetime.now(dt.UTC),
            deprecation=bundle.manifest.metadata.deprecation,
            source_digest=bundle.digest,
        )
        existing[number] = mv
        self._blobs[(name, number)] = blobs
        return mv

    def fetch(self, version: ModuleVersion, dest: Path) -> Path:
        if dest.exists():
            shutil.rmtree(dest)
        for rel, data in self._blobs[(version.name, version.version)].items():
            path = dest / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        digests.verify(dest, version.files, what=version.ref)
        return dest

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self.resolve(ModuleRef(name, version=version))
        self._aliases.setdefault(name, {})[alias] = version

    def delete_alias(self, name: str, alias: str) -> None:
        self._aliases.get(name, {}).pop(alias, None)

    def deprecate(self, name: str, version: int, after: dt.date | None) -> None:
        mv = self.resolve(ModuleRef(name, version=version))
        self._versions[name][version] = replace(mv, deprecation=after, aliases=())

    def tamper(self, name: str, version: int, rel: str) -> None:
        """Flip one byte of a stored file (for integrity tests)."""
        blob = bytearray(self._blobs[(name, version)][rel])
        blob[0] ^= 0xFF
        self._blobs[(name, version)][rel] = bytes(blob)

    def _with_aliases(self, mv: ModuleVersion) -> ModuleVersion:
        aliases = tuple(sorted(a for a, v in self._aliases.get(mv.name, {}).items() if v == mv.version))
        return replace(mv, aliases=aliases)
