"""(d) A canary that starts failing: seconds from its first failure to 100 % stable, and the client
requests that failed meanwhile.

The real local runtime end to end: ``modship up``, the system deployed behind its router, steady
load (40 requests/s from an asyncio client that notes, per answer, the time and the router's
``x-modship-routed`` header). The canary is the example head with a fault that starts after a
healthy warm-up (``runtime.faults: {errorRate: 1.0, afterSeconds: 12}``) and no in-service
fallback, so its failures are 500s. The rollout holds it at 50 % under a background analysis of the
error rate (interval 1 s, window 2 s, minSamples 3, failureLimit 0). The first failure is the first
answer the router had to retry on stable (``canary-fallback``); 100 % stable is the moment the
router's configuration has no canary any more (polled every 20 ms). ``modship retry`` restarts the
canary (and its warm-up) for the next run; the figure is the median over runs.

Also measured (no goal; ``bench/kind.py`` sets it beside the cluster's): seconds from ``modship
promote`` to the canary's first answer through the router (``seconds_promote_to_canary``),
starting the canary's ``bentoml serve`` included.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench import load, results, setup
from controller.adapters.local_runtime import router_token
from controller.apply import modules
from tests.support.services import free_port, stop_process, wait_until

WARMUP_S = 12.0
RATE = 40.0
MODSHIP = str(Path(sys.executable).parent / "modship")


def rollout_doc(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "modship.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": name},
        "spec": {
            "system": name,
            "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}],
                                    "analysis": {"checks": ["errors"], "startingStep": 0}}},
            "analysis": {"checks": [{"name": "errors", "metric": "errorRate", "threshold": {"max": 0.02},
                                     "interval": "1s", "window": "2s", "minSamples": 3, "failureLimit": 0}]},
            "policies": {"progressDeadline": "10m"},
        },
    }  # fmt: skip


class Client(threading.Thread):
    """Steady load from an asyncio loop in a thread; every answer noted with its time and route."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.answers = url, []  # (monotonic time, status, routed)
        self.stop = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        texts = load.bbc_texts(200)
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            i, nxt = 0, time.monotonic()
            pending: set[asyncio.Task[None]] = set()
            while not self.stop.is_set():
                task = asyncio.create_task(self._one(client, texts[i % len(texts)]))
                pending.add(task)
                task.add_done_callback(pending.discard)
                i, nxt = i + 1, nxt + 1 / RATE
                await asyncio.sleep(max(0.0, nxt - time.monotonic()))
            await asyncio.gather(*pending, return_exceptions=True)

    async def _one(self, client: httpx.AsyncClient, text: str) -> None:
        try:
            r = await client.post("/predict", json={"text": text})
            self.answers.append((time.monotonic(), r.status_code, r.headers.get("x-modship-routed", "")))
        except httpx.HTTPError:
            self.answers.append((time.monotonic(), 0, "error"))


def first_answer(client: Client, routed: str, since: float, *, timeout: float) -> float:
    """When ``client`` first got an answer routed ``routed`` (``x-modship-routed``) after ``since``."""

    def seen() -> float | None:
        return next((t for t, _, r in list(client.answers) if r == routed and t >= since), None)

    return wait_until(seen, timeout=timeout, interval=0.02, what=f"the first answer routed {routed}")


def run(ws: setup.Workspace, cfg: load.Load) -> dict[str, Any]:
    name = "topic-rollback"
    scratch = ws.scratch / "rollback"
    home = scratch / "home"
    home.mkdir(parents=True, exist_ok=True)
    faulty = scratch / "head-fails-after-warmup"
    shutil.copytree(ws.modules / "topic-head-v1", faulty, dirs_exist_ok=True)
    m = yaml.safe_load((faulty / "module.yaml").read_text())
    m["runtime"]["faults"] = {"errorRate": 1.0, "afterSeconds": WARMUP_S}
    (faulty / "module.yaml").write_text(yaml.safe_dump(m))
    with ws.lock:
        [reg] = modules.register(ws.registry, [faulty], skip_existing=True)
    doc = ws.spec()
    doc["metadata"]["name"] = name
    for s in doc["spec"]["steps"]:
        s.pop("fallback", None)  # failures must reach the router as 500s
    (scratch / "system.yaml").write_text(yaml.safe_dump(doc))
    (scratch / "rollout.yaml").write_text(yaml.safe_dump(rollout_doc(name)))
    env = {**os.environ, "MODSHIP_HOME": str(home), "MODSHIP_REGISTRY": ws.settings.registry_uri}

    def cli(*args: str) -> str:
        p = subprocess.run([MODSHIP, *args], env=env, capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"modship {' '.join(args)}: {p.stderr.strip()}")
        return p.stdout

    def status() -> dict[str, Any]:
        return dict(json.loads(cli("status", name, "-o", "json")))

    controller = subprocess.Popen([MODSHIP, "up"], env=env, stdout=(scratch / "controller.log").open("wb"),
                                  stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    port = free_port()
    runs: list[dict[str, float]] = []
    client = None
    try:
        wait_until((home / "controller.json").exists, timeout=60, what="controller")
        wait_until(lambda: subprocess.run([MODSHIP, "status", "x"], env=env, capture_output=True).returncode == 3,
                   timeout=60, what="controller API")  # fmt: skip
        cli("deploy", str(scratch / "system.yaml"), "--rollout", str(scratch / "rollout.yaml"), "--port", str(port))
        wait_until(lambda: status()["traffic"], timeout=180, what="stable serving")
        client = Client(f"http://127.0.0.1:{port}")
        client.start()
        promoted_at = time.monotonic()
        cli("promote", name, f"{reg.version.name}@{reg.version.version}")
        promote_s = first_answer(client, "canary", promoted_at, timeout=180) - promoted_at
        token = router_token(home / "systems" / name / "run")
        admin = httpx.Client(
            base_url=f"http://127.0.0.1:{port}/-/modship", timeout=2, headers={"x-modship-token": token}
        )
        for i in range(max(3, min(cfg.runs, 5))):
            if i:
                cli("retry", name)
            wait_until(lambda: status()["weight"] == 50, timeout=180, what="the canary at 50 %")
            mark = len(client.answers)
            wait_until(lambda: admin.get("/config").json().get("canary") is None, timeout=120, interval=0.02,
                       what="100 % stable")  # fmt: skip
            t_stable = time.monotonic()
            answers = client.answers[mark:]
            first = next((t for t, _, routed in answers if routed == "canary-fallback"), None)
            failed = sum(1 for t, code, _ in answers if code != 200 and t <= t_stable + 1)
            retried = sum(1 for a in answers if a[2] == "canary-fallback")
            runs.append({"seconds_to_stable": round(t_stable - first, 3) if first else float("nan"),
                         "failed_requests": failed, "retried_on_stable": retried})  # fmt: skip
    finally:
        if client is not None:
            client.stop.set()
            client.join(30)
        subprocess.run([MODSHIP, "down"], env=env, capture_output=True, timeout=120)
        stop_process(controller)
    seconds = statistics.median(r["seconds_to_stable"] for r in runs)
    failed = max(r["failed_requests"] for r in runs)
    checks = [results.Check("seconds from first failure to 100 % stable", seconds, "<=", 3.0),
              results.Check("failed client requests (worst run)", failed, "<=", 0)]  # fmt: skip
    return results.result(
        figures={
            "runs": runs,
            "seconds_to_stable_median": seconds,
            "failed_requests_max": failed,
            "seconds_promote_to_canary": round(promote_s, 3),
        },
        baseline={"analysis_interval_s": 1.0, "load_rps": RATE},
        checks=checks,
        goal="<= 3 s from the canary's first failure to 100 % stable at a 1 s analysis interval, 0 failed requests",
        title="a canary that starts failing: time to 100 % stable, failed client requests",
    )
