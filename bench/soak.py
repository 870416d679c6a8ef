"""Soak (long form): steady traffic while the canary's server or worker, the router or the controller
is SIGKILLed at random, ``MODSHIP_SOAK_CRASHES`` times (default 200). The short form runs in CI
(``tests/e2e/test_soak.py``); the driver is ``tests/support/soak.py``.

Goal: no client request fails, the runtime's process count is back to its start and its total RSS
within 10 % of its start. ``baseline`` is the runtime before the first crash, ``figures`` after the
last; failures are also given by what was killed (a killed router's supervisor keeps its client
connections and unanswered requests for the router it restarts: ``controller.adapters.connkeep``).
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from bench import load, results, setup
from tests.conftest import Cli
from tests.support import soak
from tests.support.local import Controller, Load, status
from tests.support.services import free_port, wait_until

CRASHES = int(os.environ.get("MODSHIP_SOAK_CRASHES", "200"))


def run(ws: setup.Workspace, cfg: load.Load) -> dict[str, Any]:
    tmp = ws.scratch / "soak"
    tmp.mkdir(parents=True, exist_ok=True)
    cli = Cli(home=tmp / "home", registry=ws.settings.registry_uri)
    (tmp / "rollout.yaml").write_text(yaml.safe_dump(soak.ROLLOUT))
    controller = Controller(cli, tmp / "controller.log").start()
    load_gen: Load | None = None
    try:
        port = free_port()
        cli.ok("deploy", str(setup.SYSTEM), "--rollout", str(tmp / "rollout.yaml"), "--port", str(port), timeout=600)
        wait_until(lambda: status(cli, soak.SYSTEM)["traffic"] or None, timeout=180, what="stable serving")
        load_gen = Load(f"http://127.0.0.1:{port}", tmp / "load.json").start()
        cli.ok("promote", soak.SYSTEM, "topic-head@2", timeout=600)
        f = soak.Soak(cli, controller, load_gen, progress=tmp / "progress.json").run(CRASHES)
    finally:
        if load_gen is not None:
            load_gen.stop()
        cli("down")
        controller.stop()
    before = {"processes": f["processes"]["before"], "rss_mib": f["rssMiB"]["before"]}
    after = {"processes": f["processes"]["after"], "rss_mib": f["rssMiB"]["after"]}
    checks = [
        results.Check("failed client requests", f["failed"], "<=", 0),
        results.Check("processes after / before", f["processes"]["after"] / f["processes"]["before"], "<=", 1.0),
        results.Check("RSS after / before", f["rssRatio"], "<=", 1.10),
        results.Check("failed requests at router kills", f["failedByKill"].get("router", 0), "<=", 0),
    ]
    return results.result(
        title=f"{f['crashes']} SIGKILLs under steady traffic (server, worker, router, controller at random)",
        figures={"runtime after": after},
        baseline={"runtime before": before},
        checks=checks,
        goal="0 failed requests; process count back to its start; RSS within 10 % of its start",
        soak=f,
        notes=[
            f"kills {f['kills']}; failed by kill {f['failedByKill']}; {f['requests']} requests",
            f"recovery {f['recoveryS']} s; canary retried after a crash loop {f['retriesAfterCrashLoop']} times",
        ],
    )
