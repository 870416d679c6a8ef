"""One factory per port: the adapter a setting selects (an unknown backend is an error, never a
silent default)."""

from __future__ import annotations

import logging
import os

from controller import ports, settings


def quiet_libraries() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    for name in ("mlflow", "alembic", "bentoml", "urllib3", "httpx", "kopf"):
        logging.getLogger(name).setLevel(logging.WARNING)


def registry(cfg: settings.Settings) -> ports.Registry:
    """MLflow at ``cfg.registry_uri``; the embedded default keeps artifacts in the data dir."""
    quiet_libraries()
    from controller.adapters.mlflow_registry import MlflowRegistry

    artifacts = None
    if cfg.embedded:  # a server chooses its own artifact store
        cfg.home.mkdir(parents=True, exist_ok=True)
        artifacts = cfg.artifacts
    return MlflowRegistry(cfg.registry_uri, artifacts=artifacts)


def model_source(tracking_uri: str | None) -> ports.ModelSource:
    """Where ``module adopt`` finds models: MLflow at ``tracking_uri``."""
    from controller.adapters.mlflow_models import MlflowModels

    return MlflowModels(tracking_uri)
