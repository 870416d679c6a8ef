"""The local runtime end to end: a real controller (`modship up`), real bentos, the real router."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import Cli
from tests.support.services import http_ok, stop_process, wait_until

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Controller:
    cli: Cli
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    args: tuple[str, ...] = ()  # more options of `modship up`

    def start(self) -> Controller:
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "modship"), "up", *self.args],
            env=self.cli.env(),
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self.ready, timeout=60, what="controller API")
        return self

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"modship up exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        path = self.cli.home / "controller.json"
        if not path.exists():
            return False
        info = json.loads(path.read_text())
        health = f"{info['url']}/v1/healthz"
        return bool(info.get("pid") == self.proc.pid and http_ok(health, token=info["token"], verify=info.get("ca")))

    def kill(self) -> None:
        """SIGKILL: no cleanup at all (the processes it started keep running)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@dataclass
class Load:
    url: str
    report: Path
    rate: float = 30.0
    bodies: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None)

    def start(self) -> Load:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "examples" / "loadgen.py"),
                "--url",
                self.url,
                "--rate",
                str(self.rate),
                "--report",
                str(self.report),
                *(["--bodies", str(self.bodies)] if self.bodies else []),
            ],
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
            start_new_session=True,
        )
        wait_until(lambda: self.stats().get("requests", 0) > 5, timeout=60, what="load flowing")
        return self

    def stats(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.report.read_text()))
        except (OSError, ValueError):
            return {}

    def stop(self) -> dict[str, Any]:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:  # a loaded machine: never leave the rest of a teardown undone
                self.proc.kill()
                self.proc.wait(10)
        return self.stats()


def status(cli: Cli, system: str) -> dict[str, Any]:
    return dict(json.loads(cli.ok("status", system, "-o", "json").out))
