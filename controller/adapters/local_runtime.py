"""The Target port on one machine: ``bentoml serve`` processes per revision behind one router.

Each revision runs as its own process group on a free loopback port with a private
``BENTOML_HOME`` (BentoML wipes its Prometheus directory when a server starts) and its own
feature-flag file. Processes are recorded in ``runtime.json`` and adopted by a restarted
controller, so killing the controller (even with SIGKILL) never interrupts traffic. A revision
that crashes is restarted with exponential backoff; a canary that keeps crashing is reported as
failed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from controller import atomic, backoff
from controller.adapters import bento
from controller.adapters.local_store import LocalStore
from controller.errors import Unavailable
from controller.plan.actions import SetTraffic
from controller.plan.observations import Health

log = logging.getLogger("modship.local")
MAX_RESTARTS = 4  # a canary restarted more often than this within CRASH_WINDOW has failed
CRASH_WINDOW = 120.0
READY_TIMEOUT = 0.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):  # reap it if it is our zombie child
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def kill_group(pid: int, *, grace: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.05)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


@dataclass
class Proc:
    revision: str
    pid: int
    port: int
    started: float
    restarts: list[float]
    next_start: float = 0.0  # backoff: not before this time (monotonic clock of this controller)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class LocalRuntime:
    def __init__(self, store: LocalStore, system: str, *, bentoml_home: Path, router_port: int) -> None:
        self.store, self.system, self.bentoml_home = store, system, bentoml_home
        self.router_port = router_port
        self.run_dir = store.dir(system) / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._http = httpx.Client(timeout=httpx.Timeout(2.0, connect=0.5))
        self.procs: dict[str, Proc] = {}
        self.router: Proc | None = None
        self._adopt()

    # -- bookkeeping ---------------------------------------------------------------------------
    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.router_port}/-/modship"

    def _adopt(self) -> None:
        path = self.run_dir / "runtime.json"
        if not path.exists():
            return
        data = json.loads(path.read_text())
        for d in data.get("revisions", []):
            p = Proc(**d)
            if alive(p.pid):
                self.procs[p.revision] = p
        r = data.get("router")
        if r and alive(r["pid"]) and r["port"] == self.router_port:
            self.router = Proc(**r)

    def _persist(self) -> None:
        data: dict[str, Any] = {
            "revisions": [asdict(p) for p in self.procs.values()],
            "router": asdict(self.router) if self.router else None,
        }
        atomic.write_text(self.run_dir / "runtime.json", json.dumps(data, indent=1))

    def _spawn(self, cmd: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
        logf = (self.run_dir / log_name).open("ab")
        return subprocess.Popen(
            cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True, stdin=subprocess.DEVNULL
        )

    # -- router ----------------------------------------------------------------------------------
    def ensure_router(self) -> None:
        if self.router is not None and alive(self.router.pid):
            return
        cmd = [
            sys.executable,
            "-m",
            "controller.entrypoints.router",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.router_port),
            "--system",
            self.system,
            "--state",
            str(self.run_dir / "router.json"),
        ]
        proc = self._spawn(cmd, dict(os.environ), "router.log")
        self.router = Proc("router", proc.pid, self.router_port, time.time(), [])
        self._persist()

    def router_ready(self) -> bool:
        try:
            return self._http.get(f"{self.admin_url}/healthz", timeout=READY_TIMEOUT).status_code == 200
        except httpx.HTTPError:
            return False

    # -- Target port -------------------------------------------------------------------------------
    def ensure(self, revision: str, role: str) -> None:
        self.ensure_router()
        p = self.procs.get(revision)
        if p is not None and alive(p.pid):
            return
        now = time.monotonic()
        if p is not None:
            if now < p.next_start:
                return  # backing off
            p.restarts = [t for t in p.restarts if time.time() - t < CRASH_WINDOW] + [time.time()]
            log.warning("%s: revision %s exited; restart %d", self.system, revision, len(p.restarts))
        lock = self.store.lock(self.system, revision)
        bento_dir = bento.bento_path(self.bentoml_home, lock)
        port = free_port()
        env = bento.serve_env(
            self.run_dir / revision / "bentoml",
            MODSHIP_FLAGS_FILE=str(self._flags_path(revision)),
            MODSHIP_TRACING=os.environ.get("MODSHIP_TRACING", "none"),
        )
        self._write_flags(revision, ())
        proc = self._spawn(bento.serve_command(bento_dir, host="127.0.0.1", port=port), env, f"{revision}.log")
        restarts = p.restarts if p is not None else []
        wait = backoff.delay(len(restarts), first=2.0, cap=30.0)
        self.procs[revision] = Proc(revision, proc.pid, port, time.time(), restarts, now + wait)
        self._persist()

    def stop(self, revision: str) -> None:
        p = self.procs.pop(revision, None)
        if p is not None:
            kill_group(p.pid)
            self._persist()

    def stop_all(self) -> None:
        for rev in list(self.procs):
            self.stop(rev)
        if self.router is not None:
            kill_group(self.router.pid)
            self.router = None
            self._persist()

    def route(self, t: SetTraffic) -> None:
        stable = self.procs.get(t.stable)
        if stable is None:
            raise Unavailable(f"stable revision {t.stable} has no process yet")
        canary = self.procs.get(t.canary) if t.canary else None
        config: dict[str, Any] = {
            "system": self.system,
            "stable": {"revision": t.stable, "url": stable.url},
            "canary": {"revision": t.canary, "url": canary.url} if canary is not None else None,
            "weight": t.weight if canary is not None else 0.0,
            "headerRoute": {"name": t.header_route[0], "value": t.header_route[1]}
            if t.header_route and canary
            else None,
            "mirror": {"percent": t.mirror} if t.mirror and canary else None,
            "sticky": {"header": t.sticky_header, "cookie": t.sticky_cookie}
            if (t.sticky_header or t.sticky_cookie)
            else None,
            "fallback": t.fallback,
        }
        try:
            current = self._http.get(f"{self.admin_url}/config").json()
            if current and _same(current, config):
                return
            if ((current or {}).get("stable") or {}).get("revision") != t.stable and not self._ready(t.stable):
                # never point users at a revision that cannot answer yet (first start, or a dead one)
                raise Unavailable(f"stable revision {t.stable} is not ready yet")
            config["generation"] = int((current or {}).get("generation", 0)) + 1
            r = self._http.put(f"{self.admin_url}/config", json=config)
            if r.status_code >= 400:
                raise Unavailable(f"router refused the configuration: {r.text[:200]}")
        except (httpx.HTTPError, ValueError) as exc:
            raise Unavailable(f"router on port {self.router_port} is not answering ({type(exc).__name__})") from exc

    def flags(self, revision: str, flags: tuple[tuple[str, bool, float], ...]) -> None:
        self._write_flags(revision, flags)

    def health(self, stable: str | None, canary: str | None) -> Health:
        failed = None
        if canary is not None:
            p = self.procs.get(canary)
            if p is not None and len([t for t in p.restarts if time.time() - t < CRASH_WINDOW]) > MAX_RESTARTS:
                failed = f"canary {canary} crashed {len(p.restarts)} times in {CRASH_WINDOW:g}s"
        return Health(
            stable_ready=stable is not None and self._ready(stable),
            canary_ready=canary is not None and self._ready(canary),
            canary_failed=failed,
        )

    def _ready(self, revision: str) -> bool:
        p = self.procs.get(revision)
        if p is None or not alive(p.pid):
            return False
        try:
            return self._http.get(f"{p.url}/readyz", timeout=READY_TIMEOUT).status_code == 200
        except httpx.HTTPError:
            return False

    def supervise(self) -> None:
        """Restart revisions whose process died (with backoff); called every controller tick."""
        for rev, p in list(self.procs.items()):
            if not alive(p.pid):
                self.ensure(rev, "restart")
        if self.router is not None and not alive(self.router.pid):
            log.warning("%s: router exited; restarting it", self.system)
            self.router = None
            self.ensure_router()

    # -- flags ---------------------------------------------------------------------------------------
    def _flags_path(self, revision: str) -> Path:
        return self.run_dir / revision / "flags.json"

    def _write_flags(self, revision: str, flags: tuple[tuple[str, bool, float], ...]) -> None:
        merged = dict(self.store.toggles(self.system))
        for name, enabled, percent in flags:
            merged[name] = {"enabled": enabled, "percent": percent}
        path = self._flags_path(revision)
        text = json.dumps(merged, sort_keys=True)
        if not path.exists() or path.read_text() != text:
            atomic.write_text(path, text)

    def refresh_toggles(self) -> None:
        """Rewrite every running revision's flag file after a ``toggle``."""
        for rev in self.procs:
            path = self._flags_path(rev)
            current = json.loads(path.read_text()) if path.exists() else {}
            merged = {**current, **self.store.toggles(self.system)}
            atomic.write_text(path, json.dumps(merged, sort_keys=True))

    def telemetry(self, window: float) -> dict[str, Any] | None:
        try:
            r = self._http.get(f"{self.admin_url}/telemetry", params={"window": window})
            return dict(r.json()) if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def close(self) -> None:
        self._http.close()


def _same(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    keys = ("stable", "canary", "weight", "headerRoute", "mirror", "sticky", "fallback")
    norm = {k: current.get(k) for k in keys}
    return all(
        norm.get(k) == wanted.get(k) or (k == "weight" and float(norm.get(k) or 0) == float(wanted[k])) for k in keys
    )
