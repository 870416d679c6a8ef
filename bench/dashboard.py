"""The web dashboard at scale, in headless Chromium (Debian's, driven by Playwright).

The controller's store is seeded directly with SYSTEMS systems, each with a canary in flight and
analysis measurements, and EVENTS events in all (``tests/support/dashboard.py``); the controller's
API and dashboard serve it from their own process, without the reconcile loop or any revision
process (the dashboard only reads what the API returns, so it cannot tell). Measured:

- first paint of the systems page and of one rollout: from navigation start (the page's
  ``performance.now()``) to the table / the rollout drawn with data, in a fresh tab each time;
  median of RUNS after one warm-up;
- a transition visible in an open page: the status file rewritten as the controller writes it,
  to the page showing the new phase (without reload); median of RUNS;
- the controller's CPU (psutil, user + system, its process) over CPU_WINDOW_S while 5 dashboards
  watch (2 on the systems page, 3 on rollouts) and a transition happens every 2 s somewhere.

The baseline is the same set-up with one system and 40 events (and, for CPU, no dashboard open).
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench import load, results, setup
from controller.plan.status import Phase
from tests.support import dashboard as dash

SYSTEMS, EVENTS = 50, 2000
RUNS = 7
CPU_WINDOW_S = 20.0
TOKEN_SCRIPT = f"sessionStorage.setItem('modship.token', {dash.TOKEN!r})"


def _paint(browser: Any, url: str, ready: str, view: str) -> float:
    """Milliseconds from navigation start to the frame after the view was drawn with its data
    (the page's own ``performance.mark``), in a fresh tab."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.add_init_script(TOKEN_SCRIPT)
    page = ctx.new_page()
    try:
        page.goto(url)
        page.wait_for_selector(ready, timeout=30_000)
        mark = f"modship:drawn:{view}"
        for _ in range(100):
            at = page.evaluate(f"performance.getEntriesByName('{mark}').map(e => e.startTime)[0] ?? null")
            if at is not None:
                return float(at)
            page.wait_for_timeout(20)
        raise RuntimeError(f"{url}: the page never marked {mark}")
    finally:
        ctx.close()


def _transitions(browser: Any, base: str, home: Path, system: str) -> list[float]:
    ctx = browser.new_context()
    ctx.add_init_script(TOKEN_SCRIPT)
    page = ctx.new_page()
    page.goto(f"{base}/dashboard/#/s/{system}")
    page.wait_for_selector("#live.on")
    page.evaluate("window.__notReloaded = true")
    out = []
    for i in range(RUNS):
        ph = Phase.PAUSED if i % 2 == 0 else Phase.PROGRESSING
        page.wait_for_selector("#rollout")
        t0 = time.monotonic()
        dash.transition(home, system, phase=ph)
        page.wait_for_selector(f"#rollout[data-phase='{ph.value}']", timeout=10_000)
        out.append((time.monotonic() - t0) * 1000)
        time.sleep(0.3)
    assert page.evaluate("window.__notReloaded") is True
    ctx.close()
    return out


def _cpu(proc: psutil.Process, seconds: float, home: Path, names: list[str], *, churn: bool) -> float:
    """Percent of one core the process used over ``seconds`` (transitions every 2 s if ``churn``)."""
    stop = threading.Event()

    def transitions() -> None:
        i = 0
        while not stop.wait(2.0):
            dash.transition(home, names[i % len(names)], phase=Phase.PAUSED if i % 2 else Phase.PROGRESSING)
            i += 1

    t = threading.Thread(target=transitions, daemon=True)
    if churn:
        t.start()
    c0, w0 = proc.cpu_times(), time.monotonic()
    time.sleep(seconds)
    c1, w1 = proc.cpu_times(), time.monotonic()
    stop.set()
    if churn:
        t.join()
    return 100 * ((c1.user - c0.user) + (c1.system - c0.system)) / (w1 - w0)


def _measure(browser: Any, scratch: Path, systems: int, events: int, *, watchers: int) -> dict[str, Any]:
    home = scratch / f"home-{systems}"
    names = dash.seed(home, systems=systems, events=events)
    one = names[len(names) // 2]
    with dash.served(home, scratch / f"api-{systems}.log") as (base, server):
        sys_url, roll_url = f"{base}/dashboard/#/", f"{base}/dashboard/#/s/{one}"
        _paint(browser, sys_url, "#systems tbody tr", "systems")  # warm-up (Python imports, file cache)
        paints_sys = [_paint(browser, sys_url, "#systems tbody tr", "systems") for _ in range(RUNS)]
        paints_roll = [_paint(browser, roll_url, "#rollout .check svg", "rollout") for _ in range(RUNS)]
        trans = _transitions(browser, base, home, one)
        proc = psutil.Process(server.pid)
        pages = []
        for i in range(watchers):
            ctx = browser.new_context()
            ctx.add_init_script(TOKEN_SCRIPT)
            page = ctx.new_page()
            page.goto(sys_url if i < 2 else f"{base}/dashboard/#/s/{names[i]}")
            page.wait_for_selector("#live.on")
            pages.append(ctx)
        cpu = _cpu(proc, CPU_WINDOW_S, home, names[: max(watchers, 1)], churn=True)
        for ctx in pages:
            ctx.close()
    return {
        "systems": systems,
        "events": events,
        "first_paint_systems_ms": round(statistics.median(paints_sys), 1),
        "first_paint_rollout_ms": round(statistics.median(paints_roll), 1),
        "transition_visible_ms": round(statistics.median(trans), 1),
        "transition_visible_max_ms": round(max(trans), 1),
        "dashboards": watchers,
        "controller_cpu_percent": round(cpu, 2),
    }


def run(ws: setup.Workspace | None = None, cfg: load.Load | None = None) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="dashboard-", dir=ws.scratch if ws is not None else None))
    with dash.chromium() as browser:
        base = _measure(browser, scratch, 1, 40, watchers=0)
        big = _measure(browser, scratch, SYSTEMS, EVENTS, watchers=5)
    checks = [
        results.Check("first paint, systems page (ms)", big["first_paint_systems_ms"], "<=", 1000),
        results.Check("first paint, one rollout (ms)", big["first_paint_rollout_ms"], "<=", 1000),
        results.Check("transition visible (ms)", big["transition_visible_ms"], "<=", 1000),
        results.Check("controller CPU, 5 dashboards (% of a core)", big["controller_cpu_percent"], "<=", 5.0),
    ]
    return results.result(
        figures={"dashboard-50": big},
        baseline={"dashboard-1": base},
        checks=checks,
        goal=f"{SYSTEMS} systems, {EVENTS} events: first paints < 1 s, transitions visible < 1 s, "
        "controller < 5 % of a core with 5 dashboards",
        ratios={
            "systems_paint_vs_1_system": round(
                results.ratio(big["first_paint_systems_ms"], base["first_paint_systems_ms"]), 2
            ),
            "cpu_vs_no_dashboard": round(
                results.ratio(big["controller_cpu_percent"], max(base["controller_cpu_percent"], 0.01)), 2
            ),
        },
    )
