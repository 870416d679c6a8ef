"""Shared fixtures: real services started once per session, a CLI runner, example modules."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import leaks
from tests.support.services import MlflowServer

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
MODSHIP = str(Path(sys.executable).parent / "modship")
_tracker: leaks.Tracker | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    global _tracker
    _tracker = leaks.Tracker()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a process the tests started is still alive (and stop it)."""
    if _tracker is None:
        return
    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = getattr(factory, "_basetemp", None)
    found = _tracker.settle(basetemp)
    if not found:
        return
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"{len(found)} process(es) started by the tests outlived the session (now stopped):"]
    lines += [f"  {leak}" for leak in found]
    if tr is not None:
        tr.write_sep("=", "processes left behind", red=True)
    for line in lines:
        (tr.write_line if tr is not None else print)(line)
    leaks.stop(found)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
    cwd: Path | None = None  # where the command runs (None: this process's working directory)

    def env(self) -> dict[str, str]:
        env = dict(os.environ, MODSHIP_HOME=str(self.home), COLUMNS="200", NO_COLOR="1")
        env.pop("MODSHIP_REGISTRY", None)
        env.pop("MLFLOW_TRACKING_URI", None)
        if self.registry:
            env["MODSHIP_REGISTRY"] = self.registry
        return env

    def __call__(self, *args: str, timeout: float = 300) -> Result:
        p = subprocess.run(
            [MODSHIP, *args], capture_output=True, text=True, env=self.env(), timeout=timeout, cwd=self.cwd
        )
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
