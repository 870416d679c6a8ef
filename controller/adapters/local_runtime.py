"""The Target port on one machine: ``bentoml serve`` processes per revision behind one router.

Each revision runs on a free loopback port with a private ``BENTOML_HOME`` (BentoML wipes its
Prometheus directory when a server starts) and its own feature-flag file.

Every revision, and the router, is one *unit* that cannot be orphaned: it runs under a small
supervisor process (``controller.adapters.supervisor``) that is the child subreaper of everything
below it — BentoML's workers live in sessions of their own, so process groups do not reach them.
When any process of a unit dies, its supervisor records which one and how, stops the survivors
and exits; the controller then reports the crash (event, ``status``, metrics) and restarts the
unit with exponential backoff. A canary that keeps crashing is reported as failed. Units are
recorded in ``runtime.json`` by their supervisor's pid *and* start time and adopted by a restarted
controller, so killing the controller (even with SIGKILL) never interrupts traffic; what a dead
supervisor left behind is stopped from its record, and units no record names are stopped too.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from controller import atomic, backoff
from controller.adapters import bento, local_units
from controller.adapters.local_store import LocalStore
from controller.adapters.local_units import Crash, Proc
from controller.errors import Unavailable
from controller.plan import router_config
from controller.plan.actions import Event, SetTraffic
from controller.plan.observations import Health
from controller.plan.reasons import Reason

log = logging.getLogger("modship.local")
MAX_RESTARTS = 4  # a canary restarted more often than this within CRASH_WINDOW has failed
CRASH_WINDOW = 120.0
READY_TIMEOUT = 0.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def admin_header() -> str:
    return "x-modship-token"


def router_token(run_dir: Path) -> str:
    """The token of a system's router admin API (``run/router.token``, 0600, made once): on one
    machine any local process can reach the router's port, so its admin API asks for this."""
    path = run_dir / "router.token"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(token)
        f.flush()
        os.fsync(f.fileno())
    return token


class LocalRuntime:
    def __init__(self, store: LocalStore, system: str, *, bentoml_home: Path, router_port: int) -> None:
        self.store, self.system, self.bentoml_home = store, system, bentoml_home
        self.router_port = router_port
        self.run_dir = store.dir(system) / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.router_token = router_token(self.run_dir)
        self._http = httpx.Client(timeout=httpx.Timeout(2.0, connect=0.5), headers={admin_header(): self.router_token})
        self.units = local_units.Units(self.run_dir / "units")
        self.procs: dict[str, Proc] = {}
        self.router: Proc | None = None
        self.crashes: dict[str, dict[str, Any]] = {}  # unit -> {"count", "byProcess", "last"}
        self._watch: local_units.ExitWatch | None = None
        self._crash_lock = threading.Lock()  # the API thread reads crashes while the loop counts them
        self._adopt()

    # -- bookkeeping ---------------------------------------------------------------------------
    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.router_port}/-/modship"

    def _adopt(self) -> None:
        path = self.run_dir / "runtime.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        self.crashes = dict(data.get("crashes") or {})
        for d in data.get("revisions", []):
            p = Proc(**d)
            if self.units.running(p):
                self.procs[p.revision] = p
            else:  # it ended while no controller watched: report it; the next reconcile restarts it
                self._collect(p)
        r = data.get("router")
        if r:
            router = Proc(**r)
            if self.units.running(router) and router.port == self.router_port:
                self.router = router
            else:
                self._collect(router)
                self.units.stop([router])
        stray = self.units.strays({p.record for p in (*self.procs.values(), self.router) if p is not None})
        if stray:
            log.warning("%s: stopped %d process(es) of units no record named", self.system, stray)
        self._persist()

    def _units(self) -> list[Proc]:
        return [*list(self.procs.values()), *([self.router] if self.router else [])]

    def _persist(self) -> None:
        data: dict[str, Any] = {
            "revisions": [asdict(p) for p in self.procs.values()],
            "router": asdict(self.router) if self.router else None,
            "crashes": self.crashes,
        }
        with self._crash_lock:
            text = json.dumps(data, indent=1)
        atomic.write_text(self.run_dir / "runtime.json", text)

    def _spawn(
        self, unit: str, cmd: list[str], env: dict[str, str], *, port: int, restarts: list[float], hold: bool = False
    ) -> Proc:
        listen = f"127.0.0.1:{port}" if hold else None
        pid, start, record = self.units.spawn(unit, cmd, env, self.run_dir / f"{unit}.log", listen=listen)
        return Proc(unit, pid, port, time.time(), restarts, start=start, record=record)

    def _collect(self, p: Proc) -> None:
        """A unit ended: stop what it left, count and report the crash (once)."""
        crash = self.units.collect(p)
        if crash is not None:
            self._report(crash)

    def _report(self, c: Crash, *, restarted: str = "restarting") -> None:
        with self._crash_lock:
            entry = self.crashes.setdefault(c.unit, {"count": 0, "byProcess": {}, "last": None})
            entry["count"] += 1
            entry["byProcess"][c.process] = entry["byProcess"].get(c.process, 0) + 1
            entry["last"] = c.dump()
        what = "the router" if c.unit == "router" else f"revision {c.unit}"
        pid = f" (pid {c.pid})" if c.pid else ""
        left = f"; stopped {c.leftovers} process(es) it left behind" if c.leftovers else ""
        msg = f"{what}: {c.process}{pid} {c.how}{left}; crash {entry['count']}, {restarted}"
        log.warning("%s: %s", self.system, msg)
        self.store.append_event(self.system, Event(Reason.PROCESS_CRASHED, msg, warning=True), now=c.at)
        self._persist()

    # -- router ----------------------------------------------------------------------------------
    def ensure_router(self) -> None:
        if self.router is not None and self.units.running(self.router):
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
        # the supervisor holds the router's socket and restarts it in place: clients wait, not fail
        env = {**os.environ, "MODSHIP_ROUTER_TOKEN": self.router_token}  # its admin API asks for it
        self.router = self._spawn("router", cmd, env, port=self.router_port, restarts=[], hold=True)
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
        if p is not None and self.units.running(p):
            return
        if p is not None:
            self._collect(p)  # idempotent: a crash is counted once
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
        restarts = p.restarts if p is not None else []
        cmd = bento.serve_command(bento_dir, host="127.0.0.1", port=port)
        new = self._spawn(revision, cmd, env, port=port, restarts=restarts)
        new.next_start = now + backoff.delay(len(restarts), first=2.0, cap=30.0)
        self.procs[revision] = new
        self._persist()

    def stop(self, revision: str) -> None:
        p = self.procs.pop(revision, None)
        if p is not None:
            self.units.stop([p])
            self._persist()

    def stop_all(self) -> None:
        """Stop every revision and the router together (``modship down``)."""
        units = self._units()
        self.procs.clear()
        self.router = None
        self.units.stop(units)
        self._persist()

    def route(self, t: SetTraffic) -> None:
        stable = self.procs.get(t.stable)
        if stable is None:
            raise Unavailable(f"stable revision {t.stable} has no process yet")
        canary = self.procs.get(t.canary) if t.canary else None
        config = router_config.wanted(
            self.system, t, stable_url=stable.url, canary_url=canary.url if canary is not None else None
        )
        try:
            current = self._http.get(f"{self.admin_url}/config").json()
            if router_config.same(current, config):
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
        if p is None or not self.units.running(p):
            return False
        try:
            return self._http.get(f"{p.url}/readyz", timeout=READY_TIMEOUT).status_code == 200
        except httpx.HTTPError:
            return False

    def supervise(self) -> None:
        """Report units that ended and restart them (revisions with backoff); every controller tick."""
        for rev, p in list(self.procs.items()):
            if not self.units.running(p):
                self._collect(p)
                self.ensure(rev, "restart")
        if self.router is not None and not self.units.running(self.router):
            self._collect(self.router)
            self.router = None
            self.ensure_router()
        for p in self._units():
            for crash in self.units.restarted(p):
                self._report(crash, restarted="restarted in place")

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

    def report(self) -> dict[str, Any]:
        """Every running unit's processes and memory, and the crashes of every unit since deploy."""
        units = self._units()
        out: dict[str, Any] = {}
        for p in units:
            count, rss = local_units.usage([p])
            out[p.revision] = {"supervisor": p.pid, "processes": count, "rssBytes": rss,
                               "members": self.units.members(p)}  # fmt: skip
        count, rss = local_units.usage(units)
        with self._crash_lock:
            crashes = json.loads(json.dumps(self.crashes))
        return {"units": out, "processes": count, "rssBytes": rss, "crashes": crashes}

    def serving(self) -> tuple[int | None, dict[str, int]]:
        """The router's port (None: not running) and each running revision's port."""
        router = self.router
        return (router.port if router is not None else None), {rev: p.port for rev, p in list(self.procs.items())}

    def watch(self, on_exit: Callable[[], None]) -> None:
        """Have ``on_exit`` called (from a thread) when a unit ends, to restart it without delay."""
        self._watch = local_units.ExitWatch(self._units, on_exit)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
        self._http.close()
