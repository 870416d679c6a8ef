"""Real services for tests: free ports, polling with deadlines, an MLflow server process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx

T = TypeVar("T")
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(probe: Callable[[], T | None], *, timeout: float, interval: float = 0.1, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # the service may not be up yet
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout}s" + (f" (last error: {last_exc!r})" if last_exc else ""))


def http_ok(url: str, timeout: float = 1.0, *, token: str | None = None, verify: str | None = None) -> bool:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return httpx.get(url, timeout=timeout, headers=headers, verify=verify or True).status_code == 200
    except httpx.HTTPError:
        return False


def stop_process(proc: subprocess.Popen[bytes], *, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL after ``grace`` seconds; then whatever ran below it
    in other sessions (BentoML's workers), which the group signal never reached."""
    from controller.adapters import proctree

    if proc.poll() is not None:
        return
    below = {pid: s.start for pid, s in proctree.descendants([proc.pid]).items() if not s.dead}
    _stop_group(proc, grace=grace)
    proctree.terminate(below, grace=grace)


def _stop_group(proc: subprocess.Popen[bytes], *, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)


class MlflowServer:
    """``mlflow server`` with a SQLite backend and proxied artifacts, on a free loopback port."""

    def __init__(self, root: Path | None = None) -> None:
        self._tmp = None if root else tempfile.TemporaryDirectory(prefix="modship-mlflow-")
        self.root = root or Path(self._tmp.name)  # type: ignore[union-attr]
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.root / "mlflow.log"

    def start(self) -> MlflowServer:
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        cmd = [
            str(VENV_BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-2000:]}")
            # /health is exempt from the host check: probe a real API call too
            r = httpx.get(f"{self.url}/api/2.0/mlflow/registered-models/search", timeout=2.0)
            return r.status_code == 200

        try:
            wait_until(ready, timeout=90, interval=0.3, what=f"mlflow server on {self.url}")
        except BaseException:
            stop_process(self.proc)  # never leave a server behind when it does not come up in time
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        if self._tmp is not None:
            self._tmp.cleanup()

    @contextlib.contextmanager
    def running(self) -> Iterator[MlflowServer]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


class BentoServer:
    """``bentoml serve TAG`` on a free loopback port; ``start`` waits for /readyz."""

    def __init__(self, tag: str, bentoml_home: Path, log: Path, **env: str) -> None:
        self.tag, self.home, self.log = tag, bentoml_home, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 120) -> BentoServer:
        from controller.adapters import bento

        name, rev = self.tag.split(":")
        env = bento.serve_env(self.log.with_suffix(".bentoml"), **{"MODSHIP_TRACING": "none", **self.env})
        cmd = bento.serve_command(self.home / "bentos" / name / rev, host="127.0.0.1", port=self.port)
        self.proc = subprocess.Popen(
            cmd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            return http_ok(f"{self.url}/readyz")

        try:
            wait_until(ready, timeout=timeout, interval=0.2, what=f"{self.tag} ready")
        except BaseException:
            stop_process(self.proc)
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def __enter__(self) -> BentoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
