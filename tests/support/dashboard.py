"""The dashboard under test: a seeded local store (many systems, many events, no processes), the
controller's API over it, and headless Chromium from Debian driven by Playwright.

    python -m tests.support.dashboard serve HOME PORT   # the API + dashboard over HOME, no reconcile loop
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from controller import atomic
from controller.plan.reasons import Reason
from controller.plan.status import CheckRun, HistoryEntry, Measurement, Phase, RolloutStatus, Traffic, Verdict
from tests.support.services import free_port, http_ok, stop_process, wait_until

REPO = Path(__file__).resolve().parents[2]
TOKEN = "bench-token"  # the served API's one token (a seeded store has no token file)
CHECKS = [
    {"name": "error-rate", "metric": "errorRate", "threshold": {"max": 0.02}, "window": "5s", "interval": "1s"},
    {"name": "disagreement", "metric": "disagreement", "threshold": {"max": 0.1}, "window": "5s", "interval": "1s"},
]
STEPS = [
    {"setWeight": 20},
    {"analysis": {"checks": ["error-rate", "disagreement"]}},
    {"setWeight": 50},
    {"pause": {}},
    {"setWeight": 80},
]


def rollout_doc(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "modship.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": name},
        "spec": {
            "system": name,
            "revision": f"r{abs(hash(name + 'b')) % 16**12:012x}",
            "strategy": {"canary": {"steps": STEPS}},
            "analysis": {"checks": CHECKS},
        },
    }


def in_flight_status(name: str, now: float, rng: random.Random) -> RolloutStatus:
    stable = f"r{abs(hash(name + 'a')) % 16**12:012x}"
    canary = f"r{abs(hash(name + 'b')) % 16**12:012x}"

    def run(base: float) -> CheckRun:
        r = CheckRun()
        for i in range(10):
            v = base * rng.uniform(0.5, 1.5)
            r = r.record(Measurement(now - 10 + i, Verdict.SUCCESSFUL, v, base * 0.8, 50))
        return r

    return RolloutStatus(
        phase=Phase.PROGRESSING,
        stable=stable,
        canary=canary,
        step=1,
        started=now - 60,
        traffic=Traffic(weight=20.0),
        step_analysis={"error-rate": run(0.005), "disagreement": run(0.03)},
        reason=Reason.STEP_COMPLETED,
        message="analysis running",
        history=(HistoryEntry(stable, "Initial", now - 3600),),
    )


def seed(home: Path, *, systems: int, events: int, seed_: int = 7) -> list[str]:
    """``systems`` systems with a canary in flight and ``events`` events in all, written as the
    controller writes them; returns their names."""
    rng = random.Random(seed_)
    now = time.time()
    names = [f"system-{i:02d}" for i in range(systems)]
    per = max(1, events // systems)
    for name in names:
        d = home / "systems" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "rollout.yaml").write_text(yaml.safe_dump(rollout_doc(name), sort_keys=False))
        s = in_flight_status(name, now, rng)
        atomic.write_text(d / "status.json", json.dumps(s.for_storage()))
        revs = [
            {"number": 1, "revision": s.stable, "modules": ["enc@1", "head@1"], "changed": [], "created": now - 3600},
            {"number": 2, "revision": s.canary, "modules": ["enc@1", "head@2"], "changed": ["head@2"], "created": now},
        ]
        (d / "revisions.json").write_text(json.dumps(revs))
        lines = [
            json.dumps({"at": now - per + i, "reason": "StepCompleted", "message": f"step {i}", "warning": False})
            for i in range(per)
        ]
        (d / "events.jsonl").write_text("\n".join(lines) + "\n")
    return names


def transition(home: Path, name: str, *, phase: Phase = Phase.PAUSED) -> None:
    """A transition as the controller writes it: the status file replaced."""
    path = home / "systems" / name / "status.json"
    s = RolloutStatus.from_storage(json.loads(path.read_text()))
    atomic.write_text(path, json.dumps(replace(s, phase=phase, reason=Reason.PAUSED_BY_USER).for_storage()))


@contextlib.contextmanager
def served(home: Path, log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.dashboard", "serve", str(home), str(port)],
        cwd=REPO,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/dashboard/"), timeout=60, what="dashboard served")
        yield url, proc
    finally:
        stop_process(proc)


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Headless Chromium from Debian (never a browser Playwright downloads)."""
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium")
    if exe is None:
        raise RuntimeError("chromium is not installed: make system-deps (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def _serve(home: str, port: int) -> None:
    import uvicorn

    from controller import settings
    from controller.entrypoints import api, guard, local_wiring

    cfg = settings.load(registry=None, home=home)
    app = api.app(
        local_wiring.controller(cfg),
        user_of=lambda t: "bench" if t == TOKEN else None,
        origins=guard.own_origins("http", "127.0.0.1", port),
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        _serve(sys.argv[2], int(sys.argv[3]))
