"""The ports: small protocols the core talks to. One adapter module per backend implements each;
``adapters.memory`` implements every port in memory (real code, for unit tests and --dry-run).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Protocol

from controller.plan.observations import QueryContext, Sample
from controller.registry.bundle import Bundle
from controller.registry.versions import ModuleVersion
from controller.spec.refs import ModuleRef
from controller.spec.rollout import Check


class ModuleCatalog(Protocol):
    """Read side of the registry. Only complete, valid versions are ever returned."""

    def modules(self) -> list[str]:
        """Names of registered modules, sorted."""
        ...

    def versions(self, name: str) -> list[ModuleVersion]:
        """Valid versions of ``name``, ascending. Raises NotFound for an unknown module."""
        ...

    def resolve(self, ref: ModuleRef) -> ModuleVersion:
        """The version a ref names (a version, an alias, or the latest). Raises NotFound."""
        ...


class ModuleStore(Protocol):
    def register(self, bundle: Bundle) -> ModuleVersion:
        """Record a new version, all or nothing: on any failure no resolvable trace remains."""
        ...

    def fetch(self, version: ModuleVersion, dest: Path) -> Path:
        """Download the version's files into ``dest`` and verify their digests (IntegrityError)."""
        ...


class ModuleLabels(Protocol):
    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``name@alias`` at ``version`` (idempotent)."""
        ...

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias; a missing alias is not an error (idempotent)."""
        ...

    def deprecate(self, name: str, version: int, after: dt.date | None) -> None:
        """Set (or with None, clear) the date after which the version must not be deployed."""
        ...


class Registry(ModuleCatalog, ModuleStore, ModuleLabels, Protocol):
    """The module registry: MLflow's Model Registry, or memory."""


class MetricsSource(Protocol):
    """A metrics provider for analysis: the router's built-in telemetry, or Prometheus."""

    def online(self) -> bool:
        """True when the provider answers (a down provider triggers the metricsDown policy)."""
        ...

    def sample(self, check: Check, ctx: QueryContext) -> Sample:
        """Measure ``check`` for the canary (and stable when relative). Never raises for a
        provider failure: returns ``Sample(value=None, error=...)`` instead."""
        ...
