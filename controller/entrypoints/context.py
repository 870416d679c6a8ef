"""What every CLI command needs: settings and the adapters they select (built lazily)."""

from __future__ import annotations

from dataclasses import dataclass, field

from controller import ports, settings
from controller.adapters import factory
from controller.adapters.factory import quiet_libraries
from controller.spec import signing

__all__ = ["Context", "quiet_libraries"]


@dataclass
class Context:
    settings: settings.Settings
    _registry: ports.Registry | None = field(default=None, repr=False)

    @property
    def registry(self) -> ports.Registry:
        if self._registry is None:
            self._registry = factory.registry(self.settings)
        return self._registry

    @property
    def signing(self) -> signing.SigningPolicy:
        """The module signing policy (``MODSHIP_SIGNING`` or ``$MODSHIP_HOME/signing.yaml``)."""
        return signing.load(self.settings.signing_file)
