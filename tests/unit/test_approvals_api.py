"""Approvals through the local control API, as three authenticated users (real token store, real
state directory, the API behind its guard): the author cannot approve, an outsider cannot, an
approver can; refusals are 403 with exit code 9; every decision is in the events, the status and
the hash-chained audit log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from controller.adapters.audit_log import AuditLog
from controller.adapters.local_governance import LocalGovernance
from controller.adapters.local_store import LocalStore
from controller.adapters.tokens import TokenStore
from controller.plan import rollout as machine
from controller.plan.governance import Change
from controller.plan.observations import Health, Observations
from controller.plan.reasons import Reason
from controller.plan.status import HistoryEntry, Phase, RolloutStatus, Traffic
from controller.spec import policy as policy_spec
from tests.unit.test_api import serve
from tests.unit.test_control import A, B, rollout

POLICY = {
    "apiVersion": "modship.dev/v1alpha1",
    "kind": "Policy",
    "metadata": {"name": "team"},
    "spec": {
        "groups": {"leads": ["owner", "alice"]},
        "systems": {
            "sys": {"approvers": ["group:leads"], "approvals": 1, "requireReason": True, "promoters": ["group:leads"]}
        },
    },
}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    store = LocalStore(tmp_path)
    store.put_rollout("sys", rollout(B))
    flying = RolloutStatus(
        phase=Phase.PROGRESSING,
        stable=A,
        canary=B,
        started=100.0,
        step=3,
        spec_hash=machine.spec_hash(rollout(B)),
        traffic=Traffic(weight=50),
        reason=Reason.AWAITING_APPROVAL,
        history=(HistoryEntry(A, "Initial", 1.0),),
    )
    store.save("sys", flying)
    (store.dir("sys") / "port").write_text("18080")
    gov = LocalGovernance(tmp_path)
    gov.set_policy(policy_spec.from_document(POLICY))
    gov.put_change("sys", Change(B, "owner", 100.0, "new head"))
    return tmp_path


@pytest.fixture
def as_user(home: Path) -> Iterator[dict[str, TestClient]]:
    tokens = TokenStore(home)
    with serve(home) as client:
        clients = {}
        for user in ("owner", "alice", "mallory"):
            c = TestClient(client.app, base_url=str(client.base_url))
            c.headers["Authorization"] = f"Bearer {tokens.create(user)}"
            clients[user] = c
        yield clients


def _refused(r: Any, words: str) -> None:
    assert (r.status_code, r.json()["exitCode"]) == (403, 9), r.text
    assert words in r.json()["error"]


def test_the_author_cannot_approve_their_own_change(as_user: dict[str, TestClient]) -> None:
    _refused(as_user["owner"].post("/v1/systems/sys/approve", json={"reason": "mine"}), "cannot approve")


def test_someone_not_an_approver_cannot_approve(as_user: dict[str, TestClient]) -> None:
    _refused(as_user["mallory"].post("/v1/systems/sys/approve", json={"reason": "lgtm"}), "may not approve")
    _refused(as_user["mallory"].post("/v1/systems/sys/reject", json={"reason": "no"}), "may not approve")


def test_an_approval_needs_the_reason_the_policy_requires(as_user: dict[str, TestClient]) -> None:
    _refused(as_user["alice"].post("/v1/systems/sys/approve", json={}), "requires a reason")


def test_an_approver_approves_once_and_it_is_recorded_everywhere(home: Path, as_user: dict[str, TestClient]) -> None:
    alice = as_user["alice"]
    wrong = alice.post("/v1/systems/sys/approve", json={"reason": "ok", "revision": A})
    assert (wrong.status_code, wrong.json()["exitCode"]) == (409, 5)
    r = alice.post("/v1/systems/sys/approve", json={"reason": "metrics look right", "revision": B})
    assert r.status_code == 200, r.text
    assert r.json() == {"system": "sys", "revision": B, "approve": True, "missing": []}
    _refused(alice.post("/v1/systems/sys/approve", json={"reason": "again"}), "already decided")

    gov = alice.get("/v1/systems/sys").json()["governance"]
    assert (gov["author"], gov["approvalsRequired"], gov["missing"]) == ("owner", 1, [])
    assert [(d["user"], d["approve"], d["reason"]) for d in gov["decisions"]] == [("alice", True, "metrics look right")]
    from rich.console import Console

    from controller.entrypoints.views import render

    console = Console(record=True, width=200)
    console.print(render(alice.get("/v1/systems/sys").json()))
    shown = console.export_text()
    assert f"change {B} by owner: new head" in shown and "approved by alice: metrics look right" in shown
    events = alice.get("/v1/systems/sys/events").json()
    assert any(e["reason"] == "Approved" and "alice" in e["message"] for e in events)
    log = AuditLog(home / "audit.jsonl")
    assert log.verify() is None
    approvals = [e for e in log.entries() if e["action"] == "approve"]
    assert [(e["actor"], e["reason"], e["after"]) for e in approvals] == [
        ("alice", "metrics look right", {"revision": B})
    ]


def test_the_state_machine_releases_the_canary_once_approved(home: Path, as_user: dict[str, TestClient]) -> None:
    from controller import settings
    from controller.adapters.memory import MemoryRegistry
    from controller.entrypoints import local_wiring

    c = local_wiring.controller(settings.Settings(home=home, registry_uri="memory:"), registry=MemoryRegistry())
    store = LocalStore(home)
    r, s, controls = store.load("sys")
    ok = Health(stable_ready=True, canary_ready=True)

    def step(now: float) -> machine.Decision:
        return machine.step(r, s, Observations(health=ok, controls=controls, release=c.release("sys", s)), now)

    assert step(200.0).status.reason is Reason.AWAITING_APPROVAL
    as_user["alice"].post("/v1/systems/sys/approve", json={"reason": "fine"})
    assert step(201.0).status.phase is Phase.PROMOTED


def test_a_rejection_aborts_the_canary(home: Path, as_user: dict[str, TestClient]) -> None:
    r = as_user["alice"].post("/v1/systems/sys/reject", json={"reason": "accuracy dropped"})
    assert r.status_code == 200 and r.json()["approve"] is False
    from controller import settings
    from controller.adapters.memory import MemoryRegistry
    from controller.entrypoints import local_wiring

    c = local_wiring.controller(settings.Settings(home=home, registry_uri="memory:"), registry=MemoryRegistry())
    store = LocalStore(home)
    ro, s, controls = store.load("sys")
    obs = Observations(health=Health(True, True), controls=controls, release=c.release("sys", s))
    d = machine.step(ro, s, obs, 300.0)
    assert (d.status.phase, d.status.reason) == (Phase.ABORTED, Reason.REJECTED)
    assert "rejected by alice: accuracy dropped" in d.status.message
    assert [e["actor"] for e in AuditLog(home / "audit.jsonl").entries() if e["action"] == "reject"] == ["alice"]


def test_a_promote_by_someone_not_a_promoter_is_refused_before_anything_is_built(
    home: Path, as_user: dict[str, TestClient]
) -> None:
    LocalStore(home).save("sys", RolloutStatus(phase=Phase.IDLE, stable=A, history=(HistoryEntry(A, "Initial", 1.0),)))
    LocalStore(home).put_rollout("sys", rollout(A))
    r = as_user["mallory"].post("/v1/systems/sys/promote", json={"modules": ["head@3"], "reason": "try"})
    _refused(r, "mallory may not promote")
    r = as_user["alice"].post("/v1/systems/sys/promote", json={"modules": ["head@3"]})
    _refused(r, "requires a reason")


def test_promote_full_needs_a_promoter_and_still_waits_for_approval(home: Path, as_user: dict[str, TestClient]) -> None:
    _refused(as_user["mallory"].post("/v1/systems/sys/promote-full", json={"reason": "hurry"}), "may not promote")
    r = as_user["alice"].post("/v1/systems/sys/promote-full", json={"reason": "enough data"})
    assert r.status_code == 200, r.text
    assert LocalStore(home).controls("sys").promote_full is not None
