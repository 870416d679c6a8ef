"""Where modship keeps its data and which registry it talks to, from the environment.

- ``MODSHIP_HOME``: the data directory (default ``~/.modship``): the embedded MLflow registry
  (SQLite + local artifacts), the module cache, built Bentos, local runtime state.
- ``MODSHIP_REGISTRY`` (or ``MLFLOW_TRACKING_URI``): any MLflow URL; default the embedded SQLite.
- ``MODSHIP_SIGNING``: the module signing policy file (default ``$MODSHIP_HOME/signing.yaml``).
- ``MODSHIP_NOTIFICATIONS``: sinks and subscriptions (default ``$MODSHIP_HOME/notifications.yaml``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    registry_uri: str

    @property
    def embedded(self) -> bool:
        return self.registry_uri.startswith("sqlite:")

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    @property
    def module_cache(self) -> Path:
        return self.home / "cache" / "modules"

    @property
    def bentoml_home(self) -> Path:
        return Path(os.environ.get("BENTOML_HOME") or self.home / "bentoml")

    @property
    def state_dir(self) -> Path:
        return self.home / "state"

    @property
    def notifications_file(self) -> Path:
        return Path(os.environ.get("MODSHIP_NOTIFICATIONS") or self.home / "notifications.yaml")

    @property
    def dead_letter_file(self) -> Path:
        """Notifications no sink accepted (JSON lines)."""
        return self.home / "notifications" / "dead-letter.jsonl"

    @property
    def audit_file(self) -> Path:
        """The hash-chained audit log of the local runtime (JSON lines)."""
        return self.home / "audit.jsonl"

    @property
    def signing_file(self) -> Path:
        return Path(os.environ.get("MODSHIP_SIGNING") or self.home / "signing.yaml")


def load(registry: str | None = None, home: str | None = None) -> Settings:
    root = Path(home or os.environ.get("MODSHIP_HOME") or Path.home() / ".modship").expanduser().absolute()
    uri = registry or os.environ.get("MODSHIP_REGISTRY") or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = f"sqlite:///{root / 'mlflow.db'}"
    return Settings(home=root, registry_uri=uri)
