"""The control plane: preconditions, the status document, request parsing, and the Kubernetes
``Control`` adapter over in-memory Rollout resources."""

from __future__ import annotations

from typing import Any

import pytest

from controller import ports
from controller.adapters.memory import MemoryRollouts
from controller.apply import control as rules
from controller.apply.kube_control import KubeControl
from controller.errors import Conflict, NotFound, SpecError
from controller.plan import governance as gov
from controller.plan.reasons import Reason
from controller.plan.status import HistoryEntry, Phase, RolloutStatus, Traffic
from controller.spec import control
from controller.spec.control import Command
from controller.spec.rollout import Rollout

A, B, C = "r" + "a" * 12, "r" + "b" * 12, "r" + "c" * 12
ME = control.Actor(user="alice", reason="testing")


def rollout(revision: str | None = B) -> Rollout:
    return Rollout.model_validate(
        {
            "apiVersion": "modship.dev/v1alpha1",
            "kind": "Rollout",
            "metadata": {"name": "sys"},
            "spec": {
                "system": "sys",
                "revision": revision,
                "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 50}]}},
                "analysis": {"checks": [{"name": "errors", "metric": "errorRate", "threshold": {"max": 0.05}}]},
                "policies": {"rollbackWindow": 60},
            },
        }
    )


IDLE = RolloutStatus(phase=Phase.IDLE, stable=A, history=(HistoryEntry(A, "Initial", 1.0),))
FLYING = RolloutStatus(
    phase=Phase.PAUSED, stable=A, canary=B, step=1, traffic=Traffic(weight=20), reason=Reason.PAUSE_STEP,
    history=IDLE.history,
)  # fmt: skip
PROMOTED = RolloutStatus(
    phase=Phase.PROMOTED, stable=B, previous_stable=A, promoted_at=100.0, reason=Reason.STEPS_COMPLETED,
    history=(*IDLE.history, HistoryEntry(B, "Promoted", 100.0, "StepsCompleted")),
)  # fmt: skip
ABORTED = RolloutStatus(phase=Phase.ABORTED, stable=A, canary=B, reason=Reason.ANALYSIS_FAILED, history=IDLE.history)


def record(s: RolloutStatus, target: str | None = B, **kw: Any) -> ports.RolloutRecord:
    return ports.RolloutRecord(
        name="sys",
        rollout=rollout(target),
        status=s,
        target=target,
        modules=kw.pop("modules", ["head@2"]),
        paused=False,
        toggles={},
        managed=True,
        shown=(s.phase.value, s.reason.value, s.message),
        **kw,
    )


def kube(s: RolloutStatus, target: str | None = B) -> tuple[KubeControl, MemoryRollouts]:
    mem = MemoryRollouts("ns")
    mem.put(record(s, target))
    return KubeControl(mem, clock=lambda: 1000.0), mem


# -- preconditions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("s", "target", "busy"),
    [(IDLE, A, None), (FLYING, B, B), (IDLE, B, B), (PROMOTED, B, None), (ABORTED, B, None)],
    ids=["idle", "in flight", "accepted, not started", "promoted", "aborted"],
)
def test_a_rollout_is_in_progress_while_in_flight_or_accepted(s: RolloutStatus, target: str, busy: str | None) -> None:
    assert rules.in_progress(s, target) == busy
    if busy is None:
        rules.ensure_no_rollout("sys", s, target)
        return
    with pytest.raises(Conflict, match=f"sys: a rollout of {busy} is in progress") as exc:
        rules.ensure_no_rollout("sys", s, target, revision=C)
    assert exc.value.exit_code == 5


def test_going_back() -> None:
    assert rules.previous_revision("sys", PROMOTED) == A
    with pytest.raises(Conflict, match="no earlier revision"):
        rules.previous_revision("sys", IDLE)
    with pytest.raises(Conflict, match="already stable"):
        rules.ensure_can_go_back("sys", IDLE, A, A, 1)
    rules.ensure_can_go_back("sys", ABORTED, B, A, 1)  # after an automatic rollback the spec is set back


# -- the status document ---------------------------------------------------------------------------


def test_the_status_document_of_a_canary_in_flight() -> None:
    refs = {B: control.RevisionRef(revision=B, number=2, modules=["head@2"])}
    facts = rules.Facts(target=B, revisions=refs, toggles={}, paused=False, managed=True)
    d = rules.status_document("sys", rollout(), FLYING, facts).wire()
    assert (d["phase"], d["reason"], d["weight"], d["canary"]["number"]) == ("Paused", "PauseStep", 20, 2)
    assert d["stable"] == {"revision": A, "number": None, "modules": []}
    assert [s["state"] for s in d["steps"]] == ["done", "current", "pending"]
    assert d["drift"] == [] and "namespace" not in d and "conditions" not in d


def test_the_status_document_says_when_the_spec_and_what_runs_differ() -> None:
    facts = rules.Facts(target=B, revisions={}, toggles={}, paused=False, managed=True, namespace="ns", conditions=[])
    d = rules.status_document("sys", rollout(), ABORTED, facts).wire()
    assert (d["weight"], d["canary"]["revision"], d["namespace"]) == (0.0, B, "ns")
    assert "automatic rollback (AnalysisFailed)" in d["drift"][0]


# -- requests --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "body", "field"),
    [
        (control.PromoteRequest, {"modules": "head@2"}, "modules"),
        (control.UndoRequest, {"toRevision": "two"}, "toRevision"),
        (control.ToggleRequest, {"flag": "x", "enabled": True, "percent": 120}, "percent"),
        (control.ToggleRequest, {"enabled": True}, "flag"),
        (control.DeployRequest, {"system": {}, "port": 0}, "port"),
    ],
)
def test_a_bad_request_is_one_error_naming_the_field(
    model: type[control.Model], body: dict[str, Any], field: str
) -> None:
    with pytest.raises(SpecError) as exc:
        control.request(model, body)
    assert exc.value.field == field and exc.value.exit_code == 2


# -- Kubernetes ------------------------------------------------------------------------------------


def test_promote_on_kubernetes_names_a_revision_and_is_refused_while_another_rolls_out() -> None:
    k, mem = kube(FLYING)
    with pytest.raises(Conflict, match=f"a rollout of {B} is in progress"):
        k.promote("sys", control.PromoteRequest(revision=C), actor=ME)
    assert (
        k.promote("sys", control.PromoteRequest(revision=B, full=True), actor=ME).revision == B
    )  # the same: finish it
    assert mem.commands["sys"] == {"promote_full": 1000.001}
    with pytest.raises(SpecError, match="names a built revision"):
        k.promote("sys", control.PromoteRequest(modules=["head@2"]), actor=ME)

    k, mem = kube(PROMOTED)
    done = k.promote("sys", control.PromoteRequest(revision=C, modules=["head@3"]), actor=ME)
    assert (done.revision, done.number, mem.read("sys").target, mem.read("sys").modules) == (C, 3, C, ["head@3"])
    assert not done.rollback  # a new revision: a canary
    with pytest.raises(Conflict, match="already stable"):
        kube(PROMOTED)[0].promote("sys", control.PromoteRequest(revision=B), actor=ME)
    back = kube(PROMOTED)[0].promote("sys", control.PromoteRequest(revision=A), actor=ME)
    assert back.rollback and back.revision == A  # the previous stable, still warm: no canary steps


def test_a_target_the_operators_policy_refused_is_replaced_by_the_next_promote() -> None:
    """After a refused change (``Governance`` False naming it), a promote of another revision is no
    conflict: nothing is in progress; a target merely accepted (no such condition) still is."""
    refusal = gov.Refusal(gov.Refused.OUTSIDE_WINDOW, "outside the change windows")
    refused = {"type": gov.CONDITION, "status": "False", "reason": "OutsideWindow",
               "message": gov.refusal_message(B, refusal)}  # fmt: skip
    mem = MemoryRollouts("ns")
    mem.put(record(IDLE, B, conditions=[refused]))
    done = KubeControl(mem, clock=lambda: 1000.0).promote("sys", control.PromoteRequest(revision=C), actor=ME)
    assert (done.revision, mem.read("sys").target) == (C, C)
    other = {**refused, "message": gov.refusal_message(C, refusal)}  # an older refusal names another target
    for conditions in ([], [other], [{**refused, "status": "True"}]):
        mem.put(record(IDLE, B, conditions=conditions))
        with pytest.raises(Conflict, match=f"a rollout of {B} is in progress"):
            KubeControl(mem, clock=lambda: 1000.0).promote("sys", control.PromoteRequest(revision=C), actor=ME)


def test_commands_on_kubernetes() -> None:
    k, mem = kube(IDLE, A)
    with pytest.raises(Conflict, match="no rollout in progress"):
        k.command("sys", Command.ABORT, actor=ME)
    assert k.command("sys", Command.PAUSE, actor=ME).command == "pause" and mem.read("sys").paused
    k.command("sys", Command.RESUME, actor=ME)
    assert not mem.read("sys").paused and mem.commands["sys"] == {"resume": 1000.0}

    k, mem = kube(FLYING)
    assert k.command("sys", Command.ROLLBACK, actor=ME).message == f"aborting canary {B}: 100 % to stable {A}"
    assert mem.commands["sys"] == {"abort": 1000.0}

    k, mem = kube(PROMOTED)
    assert k.command("sys", Command.ROLLBACK, actor=ME).message == f"rolling back to revision 1 ({A})"
    assert (mem.read("sys").target, mem.read("sys").modules) == (A, ["undo to revision 1"])
    with pytest.raises(NotFound):
        k.undo("sys", control.UndoRequest(to_revision=9), actor=ME)
    with pytest.raises(NotFound):
        k.status("other")


def test_documents_on_kubernetes() -> None:
    k, mem = kube(PROMOTED)
    d = k.status("sys").wire()
    assert (d["namespace"], d["stable"], d["previousStable"], d["rollbackWindowEndsAt"]) == (
        "ns",
        {"revision": B, "number": 2, "modules": ["head@2"]},
        A,
        160.0,
    )
    rows = [h.wire() for h in k.history("sys")]
    assert [(h["number"], h["revision"], h["role"]) for h in rows] == [(1, A, None), (2, B, "stable")]
    assert [s.wire() for s in k.systems()] == [
        {"system": "sys", "phase": "Promoted", "stable": B, "canary": None, "weight": 0.0, "target": B,
         "reason": "StepsCompleted"}
    ]  # fmt: skip
    toggled = k.toggle("sys", control.ToggleRequest(flag="guard", enabled=False, percent=50), actor=ME)
    assert toggled.flag == "guard" and mem.read("sys").toggles == {"guard": {"enabled": False, "percent": 50.0}}


# -- who asked -------------------------------------------------------------------------------------


def test_history_says_who_asked_for_each_revision_and_whose_request_ended_it() -> None:
    alice, bob = control.Actor(user="alice", reason="new head"), control.Actor(user="bob", reason="too slow")
    s = RolloutStatus(
        phase=Phase.ABORTED, stable=A, canary=B, reason=Reason.ABORTED_BY_USER,
        history=(HistoryEntry(A, "Initial", 1.0), HistoryEntry(B, "Aborted", 30.0, "AbortedByUser"),
                 HistoryEntry(C, "Aborted", 50.0, "AnalysisFailed")),
    )  # fmt: skip
    requests = [
        rules.Request(0.5, "DeployRequested", control.Actor(user="ops"), A),
        rules.Request(10.0, "PromoteRequested", alice, B),
        rules.Request(20.0, "AbortRequested", bob),
        rules.Request(40.0, "PromoteRequested", alice, C),
    ]
    revisions = [rules.Revision(1, A, 0.5), rules.Revision(2, B, 10.0), rules.Revision(3, C, 40.0)]
    rows = [h.wire() for h in rules.history(s, revisions, requests)]
    assert [r["actor"]["user"] for r in rows] == ["ops", "alice", "alice"]
    assert rows[0]["outcomes"][0]["actor"] == {"user": "ops"}
    assert rows[1]["outcomes"][0]["actor"] == {"user": "bob", "reason": "too slow"}
    assert "actor" not in rows[2]["outcomes"][0]  # the analysis failed: nobody's request
    assert "actor" not in rules.history(s, revisions)[0].wire()  # a backend without requests (Kubernetes)


def test_on_kubernetes_the_api_server_says_who_asked() -> None:
    k, mem = kube(FLYING)
    mem.caller = "system:serviceaccount:ci:deployer"
    k.command("sys", Command.PAUSE, actor=control.Actor(user="root", reason="hold"))
    assert mem.requests["sys"] == [
        {"what": "pause", "user": "system:serviceaccount:ci:deployer", "reason": "hold", "at": 1000.0}
    ]
