"""The operator's governance, pure and on in-memory adapters: a Rollout's new target is started only
if its author (the admission-checked ``modship.dev/author`` annotation) may promote it now, the same
rule ``modship promote`` applies locally; a refused target leaves the rollout where it was."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from controller.adapters.kube import governance as kube_gov
from controller.adapters.kube.rollouts import AUTHOR, BREAK_GLASS
from controller.adapters.kube_rollouts import LAST_REQUEST
from controller.adapters.memory import MemoryMetrics, MemoryRegistry, MemoryStore, MemoryTarget
from controller.apply import governance as reporting
from controller.apply import module_facts, reconcile
from controller.plan import governance as gov
from controller.plan.actions import Event
from controller.plan.audit import Action
from controller.plan.governance import Change, Refused
from controller.plan.observations import Sample
from controller.plan.reasons import Reason
from controller.plan.status import Phase, RolloutStatus
from controller.registry import bundle
from controller.spec import policy as policy_spec
from controller.spec.policy import Policy, Rule
from controller.spec.rollout import Provider, Rollout
from tests.support import modules
from tests.unit.test_reconcile import ROLLOUT, drive, promote

MONDAY = dt.datetime(2026, 11, 30, 10, 30, tzinfo=dt.UTC).timestamp()
SUNDAY = dt.datetime(2026, 11, 29, 10, 30, tzinfo=dt.UTC).timestamp()
POLICY: dict[str, Any] = {
    "apiVersion": "modship.dev/v1alpha1", "kind": "Policy",
    "spec": {"groups": {"leads": ["alice"], "oncall": ["carol"]},
             "tiers": {"stable": {"promoters": ["group:leads", "group:oncall"], "breakGlass": ["group:oncall"],
                                  "windows": [{"cron": "* 9-16 * * 1-5"}]}}},
}  # fmt: skip
IDLE = RolloutStatus(phase=Phase.IDLE, stable="rA")


def policy() -> Policy:
    return policy_spec.from_document(POLICY)


def change(author: str, revision: str = "rB", **kw: Any) -> Change:
    return Change(revision=revision, author=author, at=MONDAY, tiers=("stable",), **kw)


def test_a_new_target_is_a_change_but_going_back_is_not() -> None:
    flying = replace(IDLE, phase=Phase.PROGRESSING, canary="rB", previous_stable="r0")
    assert gov.is_new_change("rB", IDLE)
    assert not gov.is_new_change("rA", IDLE) and not gov.is_new_change(None, IDLE)
    assert not any(gov.is_new_change(t, flying) for t in ("rA", "rB", "r0"))  # stable, canary, undo
    assert gov.is_new_change("rC", flying)
    assert not gov.is_new_change("rB", RolloutStatus())  # the first revision: nothing to hold it against


def test_the_author_must_be_a_promoter() -> None:
    refused = gov.admission(policy(), "sys", change("mallory"), IDLE, MONDAY)
    assert refused is not None and refused.kind is Refused.NOT_A_PROMOTER and "mallory" in refused.message
    assert gov.admission(policy(), "sys", change("alice"), IDLE, MONDAY) is None
    assert gov.admission(None, "sys", change("mallory"), IDLE, MONDAY) is None  # no policy: no rules


def test_a_change_without_an_author_is_refused_where_promoters_are_named() -> None:
    refused = gov.admission(policy(), "sys", change(""), IDLE, MONDAY)
    assert refused is not None and refused.kind is Refused.NOT_A_PROMOTER
    assert "no modship.dev/author annotation" in refused.message
    anyone = policy_spec.from_document({**POLICY, "spec": {"systems": {"sys": {}}}})
    assert gov.admission(anyone, "sys", change(""), IDLE, MONDAY) is None


def test_outside_a_window_only_break_glass_by_the_allowed_starts_it() -> None:
    refused = gov.admission(policy(), "sys", change("alice"), IDLE, SUNDAY)
    assert refused is not None and refused.kind is Refused.OUTSIDE_WINDOW
    glass = change("carol", reason="INC-1", break_glass=True)
    assert gov.admission(policy(), "sys", glass, IDLE, SUNDAY) is None
    not_allowed = gov.admission(policy(), "sys", change("alice", reason="INC-1", break_glass=True), IDLE, SUNDAY)
    assert not_allowed is not None and not_allowed.kind is Refused.BREAK_GLASS_NOT_ALLOWED
    no_reason = gov.admission(policy(), "sys", change("carol", break_glass=True), IDLE, SUNDAY)
    assert no_reason is not None and no_reason.kind is Refused.REASON_REQUIRED


def test_abort_and_undo_are_never_held() -> None:
    flying = replace(IDLE, phase=Phase.PROGRESSING, canary="rB", previous_stable="r0")
    for target in ("rA", "rB", "r0"):
        assert gov.admission(policy(), "sys", change("mallory", target), flying, SUNDAY) is None


def test_a_refused_target_holds_the_canary_in_flight_or_the_stable() -> None:
    assert gov.held_target(IDLE) == "rA"
    assert gov.held_target(replace(IDLE, phase=Phase.PROGRESSING, canary="rB")) == "rB"
    assert gov.held_target(replace(IDLE, phase=Phase.ABORTED, canary="rB")) == "rA"


def test_the_change_is_read_from_the_rollouts_annotations() -> None:
    asked = json.dumps({"what": "promote", "user": "alice", "reason": "retrained"})
    c = kube_gov.change({AUTHOR: "alice", LAST_REQUEST: asked}, "rB", MONDAY)
    assert (c.author, c.reason, c.break_glass) == ("alice", "retrained", False)
    # someone else's last request is not the author's reason
    c = kube_gov.change({AUTHOR: "bob", LAST_REQUEST: asked}, "rB", MONDAY)
    assert (c.author, c.reason) == ("bob", "")
    c = kube_gov.change({AUTHOR: "carol", BREAK_GLASS: "INC-7", LAST_REQUEST: "not json"}, "rB", MONDAY)
    assert (c.reason, c.break_glass) == ("INC-7", True)
    assert kube_gov.change({}, "rB", MONDAY).author == ""


def test_reconcile_does_not_start_a_refused_target_and_starts_it_once_allowed() -> None:
    store, target = MemoryStore(), MemoryTarget(start_delay=1)
    store.rollouts["sys"] = Rollout.model_validate(ROLLOUT)
    metrics = MemoryMetrics(lambda c, ctx: Sample(value=0.0, stable=0.0, samples=50))
    drive(store, target, metrics, [], start=0, until=2)
    promote(store, "rB")
    author = {"who": "mallory"}

    def admit(r: Rollout, s: RolloutStatus) -> Rollout:
        refused = gov.admission(policy(), "sys", change(author["who"], r.spec.revision or ""), s, MONDAY)
        if refused is None:
            return r
        return r.model_copy(update={"spec": r.spec.model_copy(update={"revision": gov.held_target(s)})})

    for now in range(3, 8):
        reconcile.reconcile_once("sys", store=store, target=target, sources={Provider.BUILTIN: metrics},
                                 now=float(now), admit=admit)  # fmt: skip
    s = store.statuses["sys"]
    assert (s.phase, s.stable, s.canary) == (Phase.IDLE, "rA", None) and "rB" not in target.running
    author["who"] = "alice"
    reconcile.reconcile_once("sys", store=store, target=target, sources={Provider.BUILTIN: metrics}, now=8.0,
                             admit=admit)  # fmt: skip
    s = store.statuses["sys"]
    assert (s.phase, s.canary) == (Phase.PROGRESSING, "rB")


def test_a_refused_edit_leaves_the_canary_in_flight_where_it_was() -> None:
    """A refused new target comes with other changes (its modules at least): the canary in flight
    runs on at its step, it is not restarted at step 0; allowed, the new target supersedes it."""
    store, target = MemoryStore(), MemoryTarget(start_delay=1)
    store.rollouts["sys"] = Rollout.model_validate(ROLLOUT)
    metrics = MemoryMetrics(lambda c, ctx: Sample(value=0.0, stable=0.0, samples=50))
    now = drive(store, target, metrics, [], start=0, until=2)
    promote(store, "rB")
    now = drive(store, target, metrics, [], start=now, until=now + 3)
    before = store.statuses["sys"]
    assert (before.phase, before.canary, before.step) == (Phase.PROGRESSING, "rB", 1)
    spec = store.rollouts["sys"].spec.model_copy(update={"revision": "rC", "modules": ("head@3",)})
    store.rollouts["sys"] = store.rollouts["sys"].model_copy(update={"spec": spec})
    allowed = {"rC": False}

    def admit(r: Rollout, s: RolloutStatus) -> Rollout:
        if allowed.get(r.spec.revision or "", True):
            return r
        return r.model_copy(update={"spec": r.spec.model_copy(update={"revision": gov.held_target(s)})})

    events: list[Any] = []
    d = reconcile.reconcile_once("sys", store=store, target=target, sources={Provider.BUILTIN: metrics}, now=now,
                                 admit=admit, record=events.append)  # fmt: skip
    assert (d.status.canary, d.status.started) == ("rB", before.started) and d.status.step >= before.step
    assert Reason.ROLLOUT_RESTARTED not in [e.reason for e in events]
    allowed["rC"] = True
    d = reconcile.reconcile_once("sys", store=store, target=target, sources={Provider.BUILTIN: metrics},
                                 now=now + 1, admit=admit, record=events.append)  # fmt: skip
    assert (d.status.canary, d.status.started) == ("rC", now + 1) and Reason.SUPERSEDED in [e.reason for e in events]


# -- module tiers and owners from the registry --------------------------------------------------------


def registry_with_head(tmp_path: Path, *, stability: str, owners: list[str]) -> MemoryRegistry:
    m = modules.head_manifest()
    m["metadata"].update(stability=stability, owners=owners)
    reg = MemoryRegistry()
    reg.register(bundle.load(modules.write(tmp_path / "head", m)))
    return reg


def test_only_module_versions_are_read() -> None:
    named = module_facts.pinned(["topic-head@3", "topic-head@stable", "undo to revision 2", "encoder"])
    assert [(r.name, r.version) for r in named] == [("topic-head", 3)]


def test_tiers_and_owners_come_from_the_registry_and_are_kept(tmp_path: Path) -> None:
    reg = registry_with_head(tmp_path, stability="experimental", owners=["dana"])
    reader = module_facts.ModuleFactsReader(reg)
    assert reader.read(["undo to revision 2"]) is None
    facts = reader.read(["topic-head@1"])
    assert facts == gov.ModuleFacts(("experimental",), {"topic-head": ("dana",)})
    reg.tamper("topic-head", 1, "head.npz")
    reader.registry = MemoryRegistry()  # gone from the registry: what was read once is kept
    assert reader.read(["topic-head@1"]) == facts


def test_a_version_the_registry_cannot_give_counts_as_stable_with_unknown_owners(tmp_path: Path) -> None:
    reader = module_facts.ModuleFactsReader(registry_with_head(tmp_path, stability="experimental", owners=["dana"]))
    facts = reader.read(["topic-head@1", "topic-head@9"])
    assert facts is not None and facts.tiers == ("experimental", "stable")
    assert facts.problem is not None and "topic-head@9" in facts.problem
    assert facts.owners == {"topic-head": ()}  # the later name wins: unknown


def test_the_tier_picks_the_rule_the_operator_applies() -> None:
    tiered = policy_spec.from_document({**POLICY, "spec": {**POLICY["spec"], "tiers": {
        **POLICY["spec"]["tiers"], "experimental": {}}}})  # fmt: skip
    experimental = gov.ModuleFacts(("experimental",), {"topic-head": ("dana",)})
    anyone = kube_gov.change({AUTHOR: "mallory"}, "rB", SUNDAY, experimental)
    assert gov.admission(tiered, "sys", anyone, IDLE, SUNDAY) is None
    strict = kube_gov.change({AUTHOR: "mallory"}, "rB", SUNDAY)  # no registry: the stable tier's rule
    refused = gov.admission(tiered, "sys", strict, IDLE, SUNDAY)
    assert refused is not None and refused.kind is Refused.NOT_A_PROMOTER


def test_owner_approval_needs_an_owner_and_waits_while_owners_are_unknown() -> None:
    owned = policy_spec.from_document({**POLICY, "spec": {"tiers": {"stable": {"ownerApproval": True}}}})
    flying = replace(IDLE, phase=Phase.PROGRESSING, canary="rB", started=0.0)
    known = kube_gov.change({AUTHOR: "alice"}, "rB", 0.0, gov.ModuleFacts(("stable",), {"topic-head": ("dana",)}))
    r = gov.release(owned, "sys", known, (gov.Approval("bob", True, 1.0),))
    assert gov.missing(r) == ["an owner of topic-head (dana)"]
    assert gov.gate(r, flying, 10.0).reason is Reason.AWAITING_APPROVAL
    r = gov.release(owned, "sys", known, (gov.Approval("dana", True, 1.0),))
    assert gov.gate(r, flying, 10.0).open
    unknown = kube_gov.change({AUTHOR: "alice"}, "rB", 0.0, gov.ModuleFacts(("stable",), {"topic-head": ()}))
    r = gov.release(owned, "sys", unknown, (gov.Approval("dana", True, 1.0),))
    assert gov.missing(r) == ["an owner of topic-head (its owners are unknown: the registry could not be read)"]


class Kube:
    """The two reads the operator's governance makes: the policy ConfigMap and the Approvals."""

    def __init__(self, policy: dict[str, Any], approvals: list[dict[str, Any]]) -> None:
        self.cm = {"data": {"policy.yaml": json.dumps(policy)}}
        self.approvals = approvals

    def get(self, res: Any, namespace: str, name: str) -> dict[str, Any] | None:
        return self.cm if name == kube_gov.CONFIGMAP else None

    def items(self, res: Any, namespace: str, *, selector: str = "") -> list[dict[str, Any]]:
        return self.approvals


def test_a_refused_edit_does_not_make_its_author_the_author_of_the_canary_in_flight() -> None:
    approvals = {"approvals": 1, "approvers": ["alice", "bob"], "minSoak": "1h"}
    policy = {**POLICY, "spec": {"systems": {"sys": approvals}}}
    mine = {"spec": {"rollout": "sys", "revision": "rB", "approver": "alice", "decision": "approve"},
            "metadata": {"creationTimestamp": "2026-11-30T10:00:00Z"}}  # fmt: skip
    kube: Any = Kube(policy, [mine])
    flying = replace(IDLE, phase=Phase.PROGRESSING, canary="rB", started=0.0)
    # alice started rB; bob's edit to rC (refused) now holds the author and break-glass annotations
    bobs = {AUTHOR: "bob", BREAK_GLASS: "skip the soak"}
    r = kube_gov.release(kube, "ns", "sys", bobs, flying, target="rC")
    assert r is not None and (r.author, r.break_glass) == ("", False)
    assert gov.gate(r, flying, 10.0).reason is Reason.AWAITING_SOAK  # bob's glass does not skip rB's soak
    r = kube_gov.release(kube, "ns", "sys", {AUTHOR: "alice"}, flying, target="rB")
    assert r is not None and r.author == "alice" and gov.counted(r) == ()  # her own approval never counts


# -- what a cycle tells of governance (apply.governance: the operator's cycle applies it) ------------

NOT_A_PROMOTER = gov.Refusal(Refused.NOT_A_PROMOTER, "mallory may not promote")
CLOSED = gov.Refusal(Refused.OUTSIDE_WINDOW, "outside every change window")


def test_a_refused_target_is_told_once_with_an_event_and_an_audit_entry_under_its_author() -> None:
    first = reporting.held(NOT_A_PROMOTER, target="rB", shown=[], system="s", author="mallory", now=5.0, namespace="ns")
    assert (first.reason, first.message) == (Reason.FORBIDDEN, "rB not started (NotAPromoter): mallory may not promote")
    assert first.event == Event(Reason.FORBIDDEN, first.message, warning=True)
    assert first.audit is not None
    assert (first.audit["action"], first.audit["actor"], first.audit["namespace"]) == ("refused", "mallory", "ns")
    assert first.audit["after"] == {"revision": "rB", "refused": "NotAPromoter"}
    shown = [{"type": "Ready", "reason": "x"}, {"type": gov.CONDITION, "reason": "Forbidden", "message": first.message}]
    again = reporting.held(NOT_A_PROMOTER, target="rB", shown=shown, system="s", author="mallory", now=6.0)
    assert (again.reason, again.message, again.event, again.audit) == (first.reason, first.message, None, None)
    # another refusal (a window, another target) is news: told again
    closed = reporting.held(CLOSED, target="rB", shown=shown, system="s", author=None, now=7.0)
    assert closed.reason is Reason.OUTSIDE_WINDOW and closed.event is not None
    assert closed.audit is not None and closed.audit["actor"] == "unknown"


def test_break_glass_is_told_only_when_a_new_canary_starts_by_it() -> None:
    started = [Event(Reason.ROLLOUT_STARTED, "canary rB")]
    assert reporting.break_glass(started, target="rB", author="carol", why=None) == []
    assert reporting.break_glass([Event(Reason.PROMOTED, "x")], target="rB", author="carol", why="outage") == []
    (glass,) = reporting.break_glass(started, target="rB", author="carol", why="outage")
    assert glass == Event(Reason.BREAK_GLASS, "carol broke glass for rB: outage", warning=True)
    (anon,) = reporting.break_glass(started, target="rB", author=None, why="outage")
    assert anon.message.startswith("an unknown author broke glass")


def test_the_audit_entries_of_a_transition() -> None:
    rule = Rule(approvals=1)
    release = gov.Release("rB", rule, {}, "alice", approvals=(gov.Approval("bob", True, 1.0),))
    (promoted,) = reporting.transition_entries(
        Event(Reason.PROMOTED, "rB stable"), system="s", now=9.0, release=release
    )
    assert (promoted["action"], promoted["actor"], promoted["event"]) == ("promoted", reporting.CONTROLLER, "Promoted")
    assert promoted["after"] == {"author": "alice", "approvedBy": ["bob"], "breakGlass": False}
    assert "namespace" not in promoted  # the local runtime's entries have none
    # a new canary: locally the person's request was audited when accepted; the operator names its author
    start = Event(Reason.ROLLOUT_STARTED, "canary rB")
    assert reporting.transition_entries(start, system="s", now=9.0) == []
    glass = reporting.break_glass([start], target="rB", author="carol", why="outage")
    entries = reporting.transition_entries(
        start, system="s", now=9.0, started_by="carol", glass=glass, glass_why="outage", target="rB", namespace="ns"
    )
    assert [(e["action"], e["actor"], e["namespace"]) for e in entries] == [
        (Action.PROMOTE.value, "carol", "ns"),
        (Action.OVERRIDE.value, "carol", "ns"),
    ]
    assert entries[1]["reason"] == "outage" and entries[1]["after"] == {"revision": "rB", "breakGlass": True}
    assert reporting.transition_entries(Event(Reason.PAUSED_BY_USER, "p"), system="s", now=9.0, started_by="c") == []
