"""The web dashboard in a real browser (Debian's headless Chromium, driven by Playwright) against a
real controller (`modship up`) running real rollouts: every view renders, every action works
through the page (with a confirmation and a reason), the page follows transitions without a
reload, and nothing works without the credential.

With MODSHIP_DASHBOARD_SCREENSHOTS=1 the main views are saved to docs/dashboard/ (the README's).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import Cli
from tests.support import examples
from tests.support.dashboard import chromium
from tests.support.examples import variant
from tests.support.local import Controller, Load, status
from tests.support.services import free_port, wait_until

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SYSTEM = "topic-classifier"
SHOTS = REPO / "docs" / "dashboard" if os.environ.get("MODSHIP_DASHBOARD_SCREENSHOTS") else None
ACTION_TIMEOUT_MS = 180_000

CHECKS = ["error-rate", "fallback-rate", "disagreement"]
ROLLOUT = {
    "apiVersion": "modship.dev/v1alpha1",
    "kind": "Rollout",
    "metadata": {"name": SYSTEM},
    "spec": {
        "system": SYSTEM,
        "strategy": {
            "canary": {
                "steps": [
                    {"setMirror": {"percent": 50}},
                    {"setWeight": 25},
                    {"analysis": {"checks": CHECKS}},
                    {"pause": {}},
                    {"setWeight": 60},
                    {"analysis": {"checks": CHECKS[:2]}},
                ]
            }
        },
        "analysis": {
            "checks": [
                {
                    "name": "error-rate",
                    "metric": "errorRate",
                    "threshold": {"max": 0.02},
                    "window": "5s",
                    "interval": "1s",
                    "count": 3,
                    "minSamples": 5,
                },
                {
                    "name": "fallback-rate",
                    "metric": "fallbackRate",
                    "threshold": {"max": 0.05, "relativeTo": "stable"},
                    "window": "5s",
                    "interval": "1s",
                    "count": 3,
                    "minSamples": 5,
                },
                {
                    "name": "disagreement",
                    "metric": "disagreement",
                    "threshold": {"max": 0.5},
                    "window": "5s",
                    "interval": "1s",
                    "count": 3,
                    "minSamples": 3,
                },
            ]
        },
        "policies": {"rollbackWindow": "10m", "progressDeadline": "5m"},
    },
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, mlflow_server: Any) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("dashboard")
    cli = Cli(home=tmp / "home", registry=mlflow_server.url)
    root, _ = examples.build()
    cli.ok("module", "register", *[str(root / n) for n in examples.ORDER], "--skip-existing", timeout=900)
    faulty = variant(root / "topic-head-v1", tmp / "head-faulty", faults={"errorRate": 0.5})
    out = json.loads(cli.ok("module", "register", str(faulty), "--skip-existing", "-o", "json").out)
    (tmp / "rollout.yaml").write_text(yaml.safe_dump(ROLLOUT))
    controller = Controller(cli, tmp / "controller.log").start()
    port = free_port()
    system = str(REPO / "examples" / "systems" / f"{SYSTEM}.yaml")
    cli.ok("deploy", system, "--rollout", str(tmp / "rollout.yaml"), "--port", str(port), timeout=600)
    wait_until(lambda: status(cli, SYSTEM)["traffic"] or None, timeout=120, what="stable serving")
    load = Load(f"http://127.0.0.1:{port}", tmp / "load.json").start()
    info = json.loads((cli.home / "controller.json").read_text())
    url = cli.ok("dashboard", "--no-open").out.split("dashboard:", 1)[1].strip()
    with chromium() as browser:
        yield {"cli": cli, "faulty": f"topic-head@{out[0]['version']}", "url": url, "api": info["url"],
               "browser": browser}  # fmt: skip
    load.stop()
    cli("down")
    controller.stop()


def shot(page: Any, name: str) -> None:
    if SHOTS is not None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def act(page: Any, action: str, reason: str, **fields: str) -> None:
    """Click an action, fill its fields and the reason, confirm; the dialog closes on success."""
    page.click(f"#actions button[data-action='{action}']")
    dialog = page.locator("#confirm")
    assert dialog.is_visible()
    assert page.locator("#confirm-ok").is_disabled()  # no reason, no action
    for name, value in fields.items():
        el = page.locator(f"#confirm-fields [name='{name}']")
        if value in ("on", "off"):
            el.set_checked(value == "on")
        elif el.evaluate("e => e.tagName") == "SELECT":
            el.select_option(value)
        else:
            el.fill(value)
    page.fill("#confirm-reason", reason)
    page.click("#confirm-ok")
    page.wait_for_selector("#confirm", state="hidden", timeout=60_000)


def phase(page: Any, ph: str, reason: str | None = None) -> None:
    sel = f"#rollout[data-phase='{ph}']" + (f"[data-reason='{reason}']" if reason else "")
    page.wait_for_selector(sel, timeout=ACTION_TIMEOUT_MS)


def test_every_view_and_action_in_a_real_browser(stack: dict[str, Any], tmp_path: Path) -> None:
    page = stack["browser"].new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        views_and_actions(stack, page)
    except Exception:
        page.screenshot(path=str(tmp_path / "failed.png"), full_page=True)  # kept by pytest for a look
        print(f"screenshot of the page at the failure: {tmp_path / 'failed.png'}")
        raise
    assert errors == []


def views_and_actions(stack: dict[str, Any], page: Any) -> None:
    cli = stack["cli"]
    page.goto(stack["url"])
    page.wait_for_selector(f"#systems tr[data-system='{SYSTEM}']")
    assert "token=" not in page.url  # moved to sessionStorage, out of the address bar and history
    page.wait_for_selector("#live.on")

    # live: a promote from the CLI shows up in the open page, which is never reloaded
    page.click(f"#systems a[href='#/s/{SYSTEM}']")
    phase(page, "Idle")
    page.evaluate("window.__notReloaded = true")
    cli.ok("promote", SYSTEM, "topic-head@2", timeout=600)
    phase(page, "Progressing")
    page.wait_for_selector(".check[data-check='error-rate'] svg.chart circle", timeout=ACTION_TIMEOUT_MS)
    phase(page, "Paused", "PauseStep")  # the analysis passed; waiting for a person
    page.wait_for_selector("#steps li.step.current[data-index='3']")
    page.wait_for_selector(".check[data-check='disagreement'] svg.chart circle")  # still drawn after its step
    page.wait_for_selector("#signals")
    assert page.evaluate("window.__notReloaded") is True
    shot(page, "rollout")

    act(page, "pause", "hold while the on-call checks the latency panel")
    wait_until(lambda: status(cli, SYSTEM)["paused"] or None, timeout=30, what="paused")
    act(page, "resume", "latency is fine")
    phase(page, "Promoted")
    promoted = status(cli, SYSTEM)
    assert "topic-head@2" in promoted["stable"]["modules"]

    act(page, "rollback", "customer report: go back")
    wait_until(
        lambda: status(cli, SYSTEM)["stable"]["revision"] == promoted["previousStable"] or None,
        timeout=120,
        what="rolled back",
    )
    act(page, "undo", "false alarm", toRevision=str(promoted["stable"]["number"]))
    wait_until(
        lambda: status(cli, SYSTEM)["stable"]["revision"] == promoted["stable"]["revision"] or None,
        timeout=120,
        what="undone",
    )

    # a failing canary is aborted automatically: the page says why, with the deciding measurement
    act(page, "promote", "try the retrained head", modules=stack["faulty"])
    phase(page, "Aborted", "AnalysisFailed")
    why = page.locator("#why").inner_text()
    assert re.search(r"(error-rate|fallback-rate).*[0-9]", why), why  # the check, and what it measured
    shot(page, "aborted")
    page.click("#crumbs a[href='#/']")  # the systems page says it needs attention
    page.wait_for_selector(f"#systems tr.needs[data-system='{SYSTEM}']")
    shot(page, "systems")
    page.click(f"#systems a[href='#/s/{SYSTEM}']")
    phase(page, "Aborted", "AnalysisFailed")
    act(page, "retry", "once more, to be sure")
    phase(page, "Progressing")
    phase(page, "Aborted", "AnalysisFailed")

    # a grouped promotion (encoder v2 + its alignment adapter): abort, retry, then promote fully
    act(page, "promote", "smaller encoder", modules="text-encoder@2 l3-to-l6@1")
    phase(page, "Paused", "PauseStep")
    act(page, "abort", "not today")
    phase(page, "Aborted", "AbortedByUser")
    act(page, "retry", "today after all")
    phase(page, "Paused", "PauseStep")
    act(page, "promote-full", "checks are green")
    phase(page, "Promoted")
    assert "text-encoder@2" in status(cli, SYSTEM)["stable"]["modules"]

    act(page, "toggle", "turn the evaluator half off", flag="evaluation", enabled="off", percent="50")
    wait_until(
        lambda: status(cli, SYSTEM)["toggles"].get("evaluation") == {"enabled": False, "percent": 50} or None,
        timeout=30,
        what="flag toggled",
    )

    # revisions & history with each revision's module diff; the modules behind a revision
    page.click("a[href$='/history']")
    page.wait_for_selector("#history tbody tr")
    diff = page.locator("#history").inner_text()
    assert "topic-head: 1,2 → 2" in diff and "text-encoder: 1 → 2" in diff and "l3-to-l6: ∅ → 1" in diff, diff
    shot(page, "history")
    n = status(cli, SYSTEM)["stable"]["number"]
    page.click(f"#history tr[data-number='{n}'] a")
    page.wait_for_selector("#modules #edges tr")
    text = page.locator("#modules").inner_text()
    assert "text-encoder@2" in text and "l3-to-l6@1" in text and "✓ compatible" in text
    assert page.locator(".matrix td.bad").count() > 0  # encoder v2 straight into the head: a wrong space
    shot(page, "modules")


def test_nothing_works_without_the_credential(stack: dict[str, Any]) -> None:
    api = stack["api"]
    before = status(stack["cli"], SYSTEM)
    with httpx.Client(base_url=api, timeout=30) as http:
        assert http.get("/dashboard/").status_code == 200  # the page itself holds no data
        for path in ("/v1/systems", f"/v1/systems/{SYSTEM}", "/v1/events/stream"):
            assert http.get(path).status_code == 401, path
        for verb in ("pause", "resume", "abort", "retry", "rollback", "promote-full", "undo", "toggle", "promote"):
            r = http.post(f"/v1/systems/{SYSTEM}/{verb}", json={"reason": "no token"})
            assert r.status_code == 401, (verb, r.text)
    after = status(stack["cli"], SYSTEM)
    assert (after["phase"], after["stable"], after["paused"]) == (before["phase"], before["stable"], before["paused"])

    page = stack["browser"].new_page()
    page.goto(stack["api"] + "/dashboard/#token=not-a-real-token")
    page.wait_for_selector("form#login")
    assert "refused" in page.locator("main").inner_text()
