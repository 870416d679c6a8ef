"""Shared fixtures: real services started once per session, a CLI runner, example modules."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.services import MlflowServer

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
MODSHIP = str(Path(sys.executable).parent / "modship")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with MlflowServer(tmp_path_factory.mktemp("mlflow")).running() as server:
        yield server


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Cli:
    home: Path
    registry: str | None

    def env(self) -> dict[str, str]:
        env = dict(os.environ, MODSHIP_HOME=str(self.home), COLUMNS="200", NO_COLOR="1")
        env.pop("MODSHIP_REGISTRY", None)
        env.pop("MLFLOW_TRACKING_URI", None)
        if self.registry:
            env["MODSHIP_REGISTRY"] = self.registry
        return env

    def __call__(self, *args: str, timeout: float = 300) -> Result:
        p = subprocess.run([MODSHIP, *args], capture_output=True, text=True, env=self.env(), timeout=timeout)
        return Result(p.returncode, p.stdout, p.stderr)

    def ok(self, *args: str, timeout: float = 300) -> Result:
        r = self(*args, timeout=timeout)
        assert r.code == 0, f"modship {' '.join(args)} -> {r.code}\n{r.out}\n{r.err}"
        return r


@pytest.fixture
def cli(tmp_path: Path, mlflow_server: MlflowServer) -> Cli:
    """The modship CLI against the session's real MLflow server (a fresh data dir per test)."""
    return Cli(home=tmp_path / "home", registry=mlflow_server.url)


@pytest.fixture
def embedded_cli(tmp_path: Path) -> Cli:
    """The modship CLI on the embedded default: SQLite registry in the data dir, no server."""
    return Cli(home=tmp_path / "home", registry=None)
