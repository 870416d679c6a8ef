"""What every CLI command needs: settings and the adapters they select (built lazily)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from controller import ports, settings


def quiet_libraries() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    for name in ("mlflow", "alembic", "bentoml", "urllib3", "httpx", "kopf"):
        logging.getLogger(name).setLevel(logging.WARNING)


@dataclass
class Context:
    settings: settings.Settings
    _registry: ports.Registry | None = field(default=None, repr=False)

    @property
    def registry(self) -> ports.Registry:
        if self._registry is None:
            quiet_libraries()
            from controller.adapters.mlflow_registry import MlflowRegistry

            artifacts = None
            if self.settings.embedded:  # a server chooses its own artifact store
                self.settings.home.mkdir(parents=True, exist_ok=True)
                artifacts = self.settings.artifacts
            self._registry = MlflowRegistry(self.settings.registry_uri, artifacts=artifacts)
        return self._registry
