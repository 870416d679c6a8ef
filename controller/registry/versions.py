"""A registered module version as modship sees it: manifest, digests, aliases, state."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from controller.spec.modules import ModuleManifest


@dataclass(frozen=True, slots=True)
class ModuleVersion:
    name: str
    version: int
    manifest: ModuleManifest
    digest: str
    files: dict[str, str]
    source: str
    aliases: tuple[str, ...] = ()
    created: dt.datetime | None = None
    deprecation: dt.date | None = None
    source_digest: str = ""
    """Digest of the directory as submitted (before MLmodel was added): finds re-registrations."""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def deprecated(self, today: dt.date) -> bool:
        """True once ``today`` is past the deprecation date."""
        return self.deprecation is not None and today > self.deprecation

    def to_json(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": self.name,
            "version": self.version,
            "role": m.role.value,
            "aliases": list(self.aliases),
            "digest": self.digest,
            "files": dict(self.files),
            "source": self.source,
            "created": self.created.isoformat() if self.created else None,
            "deprecation": self.deprecation.isoformat() if self.deprecation else None,
            "runtime": m.runtime.dump(),
            "contract": m.contract.dump(),
            "metadata": m.metadata.dump(),
        }


def effective_deprecation(manifest: ModuleManifest, override: str | None) -> dt.date | None:
    if override:
        return dt.date.fromisoformat(override)
    return manifest.metadata.deprecation
