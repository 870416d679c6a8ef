"""The local controller's HTTP API as a route table over the control plane: documents, refusals
with their exit codes, and bad requests naming the field. On a state directory written by the
real LocalStore; nothing is served or built (promotes that build are end-to-end tests)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from controller import settings
from controller.adapters.local_store import LocalStore
from controller.adapters.memory import MemoryRegistry
from controller.adapters.tokens import TokenStore
from controller.entrypoints import api, guard, local_wiring
from controller.plan.reasons import Reason
from controller.plan.status import HistoryEntry, Phase, RolloutStatus, Traffic
from tests.unit.test_control import A, B, rollout


@pytest.fixture
def home(tmp_path: Path) -> Path:
    store = LocalStore(tmp_path)
    store.put_rollout("sys", rollout(A))
    store.save("sys", RolloutStatus(phase=Phase.IDLE, stable=A, history=(HistoryEntry(A, "Initial", 1.0),)))
    (store.dir("sys") / "port").write_text("18080")
    return tmp_path


ORIGIN = "http://127.0.0.1:18000"


def serve(home: Path) -> TestClient:
    """The API as ``modship up`` serves it (behind its guard), on the real token store of ``home``."""
    c = local_wiring.controller(settings.Settings(home=home, registry_uri="memory:"), registry=MemoryRegistry())
    app = api.app(c, user_of=TokenStore(home).user_of, origins=guard.own_origins("http", "127.0.0.1", 18000))
    return TestClient(app, base_url=ORIGIN)


@pytest.fixture
def http(home: Path) -> Iterator[TestClient]:
    token = TokenStore(home).create("owner")
    with serve(home) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


def test_status_and_the_listing(http: TestClient) -> None:
    d = http.get("/v1/systems/sys").json()
    assert (d["phase"], d["stable"]["revision"], d["router"], d["managed"], d["drift"]) == (
        "Idle",
        A,
        "http://127.0.0.1:18080",
        False,
        [],
    )
    assert "namespace" not in d and "conditions" not in d
    assert http.get("/v1/systems").json() == [
        {"system": "sys", "phase": "Idle", "stable": A, "canary": None, "weight": 0.0, "target": A, "reason": ""}
    ]
    assert http.get("/v1/systems/sys/events").json() == []
    assert http.get("/v1/systems/nope").json()["exitCode"] == 3


def test_refusals_are_conflicts_with_exit_code_5(http: TestClient) -> None:
    r = http.post("/v1/systems/sys/abort", json={})
    assert (r.status_code, r.json()["exitCode"]) == (409, 5) and "nothing to abort" in r.json()["error"]
    r = http.post("/v1/systems/sys/undo", json={})
    assert (r.status_code, r.json()["exitCode"]) == (409, 5) and "no earlier revision" in r.json()["error"]


def test_a_promote_while_a_rollout_is_in_progress_is_refused_naming_it(home: Path, http: TestClient) -> None:
    flying = RolloutStatus(
        phase=Phase.PROGRESSING, stable=A, canary=B, traffic=Traffic(weight=20), reason=Reason.ROLLOUT_STARTED
    )
    LocalStore(home).save("sys", flying)
    r = http.post("/v1/systems/sys/promote", json={"modules": ["head@3"]})
    assert (r.status_code, r.json()) == (
        409,
        {"error": f"sys: a rollout of {B} is in progress (abort it or wait)", "exitCode": 5},
    )
    assert http.post("/v1/systems/sys/abort", json={}).json() == {"system": "sys", "command": "abort"}
    assert LocalStore(home).controls("sys").abort is not None


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/systems/sys/promote", {"modules": "head@2"}, "modules"),
        ("/v1/systems/sys/undo", {"toRevision": "one"}, "toRevision"),
        ("/v1/systems/sys/toggle", {"flag": "f", "enabled": "yes"}, "enabled"),
        ("/v1/systems", {"system": {}, "port": 70000}, "port"),
    ],
)
def test_a_bad_request_names_the_field(http: TestClient, path: str, body: dict[str, object], field: str) -> None:
    r = http.post(path, json=body)
    assert (r.status_code, r.json()["exitCode"]) == (400, 2) and r.json()["error"].startswith(f"{field}: ")
    r = http.post(path, content=b"[1]", headers={"content-type": "application/json"})
    assert r.json() == {"error": "request body must be a JSON object", "exitCode": 2}


def flying(home: Path) -> None:
    LocalStore(home).save(
        "sys",
        RolloutStatus(
            phase=Phase.PROGRESSING, stable=A, canary=B, traffic=Traffic(weight=20), reason=Reason.ROLLOUT_STARTED,
            history=(HistoryEntry(A, "Initial", 1.0),),
        ),
    )  # fmt: skip


def test_a_cross_site_form_post_is_refused_and_changes_nothing(home: Path, http: TestClient) -> None:
    """What any web page the user visits could send: a text/plain POST from its own origin."""
    flying(home)
    token = http.headers["Authorization"]
    with serve(home) as bare:
        for headers in (
            {"Origin": "https://evil.example", "Content-Type": "text/plain"},  # the page, no token
            {"Origin": "https://evil.example", "Content-Type": "text/plain", "Authorization": token},  # even with it
            {"Content-Type": "text/plain", "Authorization": token},  # no Origin, still not JSON
        ):
            r = bare.post("/v1/systems/sys/abort", content=b'{"reason": "x"}', headers=headers)
            assert r.status_code in (401, 403, 415), r.text
    assert LocalStore(home).controls("sys").abort is None
    assert LocalStore(home).events("sys") == []


def test_who_asked_and_why_is_on_the_timeline_and_in_the_history(home: Path, http: TestClient) -> None:
    flying(home)
    store = TokenStore(home)
    bob = store.create("bob")
    r = http.post("/v1/systems/sys/abort", json={"reason": "p99 over budget", "user": "mallory"})
    assert r.status_code == 200
    ev = http.get("/v1/systems/sys/events").json()
    assert ev[-1]["reason"] == "AbortRequested"
    assert ev[-1]["actor"] == {"user": "owner", "reason": "p99 over budget"}  # the token's user, not the body's
    assert ev[-1]["message"] == "owner asked: abort: p99 over budget"
    http.post("/v1/systems/sys/pause", json={}, headers={"Authorization": f"Bearer {bob}"})
    assert http.get("/v1/systems/sys/events").json()[-1]["actor"] == {"user": "bob", "reason": None}


def test_a_bad_reason_names_the_field(http: TestClient) -> None:
    r = http.post("/v1/systems/sys/pause", json={"reason": "two\nlines"})
    assert (r.status_code, r.json()["exitCode"]) == (400, 2) and r.json()["error"].startswith("reason: ")
    r = http.post("/v1/systems/sys/pause", json={"reason": "x" * 501})
    assert r.status_code == 400
