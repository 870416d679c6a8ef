"""The soak: a system under steady traffic while its canary is crashed and restarted many times.

Each round SIGKILLs one process at random — the canary's server, the canary's worker, the router or
the controller — and waits until everything is back (the controller answering, the router and the
canary serving again, the crash reported). A canary that crashes too often in a row is aborted by
the controller (a crash loop): the soak then retries it, as a person would. Measured: client
requests that failed (by what was killed), the runtime's process count and total RSS before and
after. Used by ``tests/e2e/test_soak.py`` (short form) and ``bench/soak.py`` (long form).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from controller.adapters import proctree
from tests.conftest import Cli
from tests.support.local import Controller, Load
from tests.support.services import http_ok, wait_until

KINDS = ("server", "worker", "router", "controller")
# what may be killed: all of KINDS unless narrowed (``MODSHIP_SOAK_KINDS=router``, to soak one of them)
CHOSEN = tuple(k for k in os.environ.get("MODSHIP_SOAK_KINDS", ",".join(KINDS)).split(",") if k in KINDS) or KINDS
SYSTEM = "topic-classifier"
# a canary that stays at 20 % until resumed: nothing but the crashes decides its fate
ROLLOUT = {
    "apiVersion": "modship.dev/v1alpha1",
    "kind": "Rollout",
    "metadata": {"name": SYSTEM},
    "spec": {"system": SYSTEM, "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}]}}},
}


@dataclass
class Soak:
    cli: Cli
    controller: Controller
    load: Load
    rng: random.Random = field(default_factory=lambda: random.Random(11))
    kills: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    recovery_s: list[float] = field(default_factory=list)
    progress: Path | None = None  # figures so far, rewritten after every round (long runs)

    # -- what runs -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """``status -o json`` straight from the controller's API (polled often: no CLI process each time)."""
        info = json.loads((self.cli.home / "controller.json").read_text())
        auth = {"Authorization": f"Bearer {info['token']}"}
        return dict(httpx.get(f"{info['url']}/v1/systems/{SYSTEM}", headers=auth, timeout=10).json())

    def runtime(self) -> dict[str, Any]:
        path = self.cli.home / "systems" / SYSTEM / "run" / "runtime.json"
        return dict(json.loads(path.read_text()))

    def usage(self) -> tuple[int, int]:
        """Processes of the runtime found in /proc (not what it reports): everything started with
        this data directory in its environment, the controller excepted."""
        home = f"MODSHIP_HOME={self.cli.home}".encode()
        ctl = self.controller.proc.pid if self.controller.proc else -1
        count = rss = 0
        for s in proctree.table().values():
            if s.dead or s.pid == ctl:
                continue
            try:
                env = Path(f"/proc/{s.pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if home in env:
                count, rss = count + 1, rss + s.rss
        return count, rss

    def breakdown(self) -> dict[str, float]:
        """RSS (MiB) of the runtime's processes by what they run: where memory went, if it grew."""
        home = f"MODSHIP_HOME={self.cli.home}".encode()
        ctl = self.controller.proc.pid if self.controller.proc else -1
        out: dict[str, float] = {}
        for s in proctree.table().values():
            if s.dead or s.pid == ctl:
                continue
            try:
                env = Path(f"/proc/{s.pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if home in env:
                cmd = proctree.cmdline(s.pid)
                kind = next((k for k, m in _KINDS if m in cmd), "other")
                out[kind] = round(out.get(kind, 0.0) + s.rss / 2**20, 1)
        return out

    def members(self, unit: str) -> dict[str, int]:
        units = self.status()["processes"]["units"]
        return {m["process"]: m["pid"] for m in (units.get(unit) or {}).get("members", [])}

    def canary(self) -> str | None:
        s = self.status()
        if s["phase"] == "Aborted":  # the controller saw a crash loop: retry, as a person would
            self.cli.ok("retry", SYSTEM)
            self.retries += 1
            wait_until(lambda: self.status()["phase"] != "Aborted", timeout=60, what="the retry taken")
            return None
        return (s.get("canary") or {}).get("revision") if s["weight"] > 0 else None

    def steady(self) -> str:
        """Wait until the controller, the router and both revisions serve; returns the canary."""

        def ready() -> str | None:
            if not self.controller.ready():
                return None
            canary = self.canary()
            rt = self.runtime()
            ports = {p["revision"]: p["port"] for p in rt["revisions"]}
            if canary is None or canary not in ports or rt.get("router") is None:
                return None
            ok = http_ok(f"http://127.0.0.1:{ports[canary]}/readyz") and http_ok(
                f"http://127.0.0.1:{rt['router']['port']}/-/modship/readyz"
            )
            members = self.members(canary)
            return canary if ok and {"server", "worker"} <= set(members) else None

        return wait_until(ready, timeout=300, interval=0.3, what="the system back to steady")

    # -- one round -----------------------------------------------------------------------------
    def crash(self, kind: str) -> None:
        canary = self.steady()
        before = self.load.stats().get("failed", 0)
        t0 = time.monotonic()
        if kind == "controller":
            self.controller.kill()
            self.controller.start()
        else:
            unit, process = ("router", "router") if kind == "router" else (canary, kind)
            pid = self.members(unit)[process]
            crashes = self._crashes(unit)
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: self._crashes(unit) > crashes, timeout=120, what=f"the {kind} crash reported")
        self.steady()
        self.recovery_s.append(time.monotonic() - t0)
        self.kills[kind] += 1
        self.failed[kind] += self.load.stats().get("failed", 0) - before

    def _crashes(self, unit: str) -> int:
        return int((self.status()["processes"]["crashes"].get(unit) or {}).get("count", 0))

    def run(self, crashes: int) -> dict[str, Any]:
        """``crashes`` rounds (every kind at least once when there are enough); the figures."""
        self.steady()
        wait_until(self._settled, timeout=60, what="a stable process count")
        count0, rss0 = self._warm()
        by0 = self.breakdown()
        failed0 = self.load.stats().get("failed", 0)
        requests0 = self.load.stats().get("requests", 0)
        t0 = time.monotonic()
        order = list(CHOSEN)[:crashes] + [self.rng.choice(CHOSEN) for _ in range(crashes - len(CHOSEN))]
        self.rng.shuffle(order)
        for kind in order:
            self.crash(kind)
            if self.progress is not None:
                done = {"kills": dict(self.kills), "failedByKill": dict(self.failed), "usage": self.usage(),
                        "retries": self.retries, "recoveryS": _spread(self.recovery_s)}  # fmt: skip
                self.progress.write_text(json.dumps(done))
        self.steady()
        wait_until(lambda: self._settled(count0), timeout=120, what="the process count back")
        count1, rss1 = self._warm()
        by1 = self.breakdown()
        stats = self.load.stats()
        return {
            "crashes": sum(self.kills.values()),
            "kills": dict(self.kills),
            "requests": stats.get("requests", 0) - requests0,
            "failed": stats.get("failed", 0) - failed0,
            "failedByKill": dict(self.failed),
            "lastFailures": stats.get("lastFailures", []),
            "retriesAfterCrashLoop": self.retries,
            "processes": {"before": count0, "after": count1},
            "rssMiB": {"before": round(rss0 / 2**20, 1), "after": round(rss1 / 2**20, 1)},
            "rssRatio": round(rss1 / rss0, 4) if rss0 else None,
            "rssMiBByProcess": {"before": by0, "after": by1},
            "recoveryS": _spread(self.recovery_s),
            "seconds": round(time.monotonic() - t0, 1),
        }

    def _warm(self) -> tuple[int, int]:
        """The usage once memory has stopped growing: two readings 3 s apart, the same process
        count and RSS within 1 %. Model arenas (batches of new sizes), caches and allocators grow
        while a fresh process warms up; growth that goes on past that is what the soak looks for."""
        last = [self.usage()]

        def grown() -> tuple[int, int] | None:
            now, prev = self.usage(), last[0]
            last[0] = now
            return now if now[0] == prev[0] and abs(now[1] - prev[1]) <= 0.01 * prev[1] else None

        return wait_until(grown, timeout=120, interval=3.0, what="memory to settle")

    def _settled(self, want: int | None = None) -> tuple[int, int] | None:
        """The usage once the count is the same twice in a row (and equals ``want`` if given)."""
        a = self.usage()
        time.sleep(0.5)  # two samples apart: a count that holds, not a process being born or reaped
        b = self.usage()
        if a[0] != b[0] or (want is not None and b[0] != want):
            return None
        return b


_KINDS = (  # first match wins: a supervisor's command line names what it supervises
    ("supervisor", "controller.adapters.supervisor"),
    ("isolated worker", "controller.pipeline.worker"),
    ("bento worker", "_bentoml_impl.worker"),
    ("router", "router"),
    ("bento server", "bentoml"),
)


def _spread(xs: list[float]) -> dict[str, float] | None:
    return {"median": round(sorted(xs)[len(xs) // 2], 1), "max": round(max(xs), 1)} if xs else None
