"""The dashboard's server side without a browser: the change feed (one poller for every
subscriber, changes named within an interval), the local store's fingerprint, the static files and
their security headers, and that every asset ships as package data. The page itself is tested in
Chromium (tests/e2e/test_dashboard.py)."""

from __future__ import annotations

import asyncio
import json
import tomllib
from pathlib import Path

from starlette.testclient import TestClient

from controller import settings
from controller.adapters.local_store import LocalStore
from controller.adapters.memory import MemoryRegistry
from controller.apply.watch import Watch
from controller.entrypoints import api, dashboard, guard, local_wiring
from controller.plan.status import Phase, RolloutStatus
from tests.unit.test_control import A, rollout

REPO = Path(__file__).resolve().parents[2]


def test_a_change_reaches_every_subscriber_within_an_interval() -> None:
    state = {"a": 1, "b": 1}
    calls = 0

    def fingerprint() -> dict[str, int]:
        nonlocal calls
        calls += 1
        return dict(state)

    async def main() -> tuple[list[str], list[str], list[str]]:
        w = Watch(fingerprint, interval=0.05)
        async with w.subscribe() as q1, w.subscribe() as q2:
            await asyncio.sleep(0.12)
            state["b"] = 2
            state["c"] = 1  # a new system counts as a change
            got1 = await asyncio.wait_for(q1.get(), timeout=1.0)
            got2 = await asyncio.wait_for(q2.get(), timeout=1.0)
            del state["a"]
            got3 = await asyncio.wait_for(q1.get(), timeout=1.0)
        await asyncio.sleep(0.15)  # nobody listens: the poller stops
        return got1, got2, got3

    got1, got2, got3 = asyncio.run(main())
    assert got1 == got2 == ["b", "c"] and got3 == ["a"]
    polled = calls
    asyncio.run(asyncio.sleep(0.2))
    assert calls == polled


def test_the_store_fingerprint_changes_with_every_write(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_rollout("sys", rollout(A))
    first = store.fingerprint()
    assert list(first) == ["sys"]
    store.save("sys", RolloutStatus(phase=Phase.IDLE, stable=A))
    second = store.fingerprint()
    assert second != first
    store.command("sys", paused=True)
    assert store.fingerprint() != second
    (tmp_path / "systems" / "half-written").mkdir()  # no rollout.yaml: not a system yet
    assert list(store.fingerprint()) == ["sys"]


def test_the_page_is_served_with_a_strict_policy(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_rollout("sys", rollout(A))
    c = local_wiring.controller(settings.Settings(home=tmp_path, registry_uri="memory:"), registry=MemoryRegistry())
    app = api.app(c, user_of=lambda t: None, origins=guard.own_origins("http", "127.0.0.1", 18000))
    with TestClient(app, base_url="http://127.0.0.1:18000", follow_redirects=False) as http:
        assert http.get("/").headers["location"] == "/dashboard/"
        page = http.get("/dashboard/")
        assert page.status_code == 200 and '<script type="module" src="app.js">' in page.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["referrer-policy"] == "no-referrer"
        for asset in ("app.js", "api.js", "views.js", "chart.js", "style.css"):
            assert http.get(f"/dashboard/{asset}").status_code == 200, asset
        assert "set-cookie" not in page.headers
        # the page is public, the data is not: no token, no data, and no live feed either
        assert http.get("/v1/systems").status_code == 401
        assert http.get("/v1/events/stream").status_code == 401
        assert http.get("/v1/systems/sys/modules?revision=1").status_code == 401


def test_every_asset_ships_in_the_wheel_and_none_comes_from_elsewhere() -> None:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["controller"]
    for f in dashboard.STATIC.iterdir():
        rel = f.relative_to(REPO / "controller")
        assert any(rel.match(p) or Path(str(rel)).match(p) for p in data), f"{rel} is not package data"
        text = f.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, f.name
    assert json.dumps(dashboard.SECURITY_HEADERS)  # plain strings
