"""Governance, pure: every refusal of the policy, the approval gate and the state machine held by it."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import pytest

from controller.errors import SpecError
from controller.plan import governance as gov
from controller.plan import rollout as machine
from controller.plan.governance import Approval, Change, Refused, Release
from controller.plan.observations import Controls, Health, Observations
from controller.plan.reasons import Reason, Waiting
from controller.plan.status import Phase, RolloutStatus
from controller.spec import policy as policy_spec
from controller.spec.policy import Rule, Window
from controller.spec.rollout import Rollout

GROUPS = {"leads": ("alice", "bob"), "oncall": ("carol",)}
# Monday 2026-11-30 10:30 UTC and Sunday 2026-11-29 10:30 UTC
MONDAY = dt.datetime(2026, 11, 30, 10, 30, tzinfo=dt.UTC).timestamp()
SUNDAY = dt.datetime(2026, 11, 29, 10, 30, tzinfo=dt.UTC).timestamp()
OFFICE = Window(cron="* 9-16 * * 1-5")


def rule(**kw: Any) -> Rule:
    return Rule.model_validate(kw)


def release(r: Rule, approvals: tuple[Approval, ...] = (), **kw: Any) -> Release:
    return Release(revision="B", rule=r, groups=GROUPS, author="dave", approvals=approvals, **kw)


def yes(user: str, at: float = 1.0) -> Approval:
    return Approval(user, True, at, "looks good")


# -- who may promote -------------------------------------------------------------------------------


def test_anyone_may_promote_without_a_policy() -> None:
    assert gov.promote_refusal(Rule(), {}, user="x", reason=None, now=MONDAY) is None


def test_unauthorized_promote_is_refused() -> None:
    r = rule(promoters=["group:leads"])
    refused = gov.promote_refusal(r, GROUPS, user="mallory", reason="x", now=MONDAY)
    assert refused is not None and refused.kind is Refused.NOT_A_PROMOTER
    assert gov.promote_refusal(r, GROUPS, user="bob", reason="x", now=MONDAY) is None


def test_missing_reason_is_refused() -> None:
    r = rule(requireReason=True)
    for reason in (None, "", "   "):
        refused = gov.promote_refusal(r, GROUPS, user="bob", reason=reason, now=MONDAY)
        assert refused is not None and refused.kind is Refused.REASON_REQUIRED
    assert gov.promote_refusal(r, GROUPS, user="bob", reason="new encoder", now=MONDAY) is None


def test_outside_a_change_window_is_refused_and_break_glass_overrides_it() -> None:
    r = rule(windows=[{"cron": "* 9-16 * * 1-5"}], promoters=["group:leads", "group:oncall"])
    assert gov.promote_refusal(r, GROUPS, user="bob", reason=None, now=MONDAY) is None
    refused = gov.promote_refusal(r, GROUPS, user="bob", reason=None, now=SUNDAY)
    assert refused is not None and refused.kind is Refused.OUTSIDE_WINDOW
    assert gov.promote_refusal(r, GROUPS, user="bob", reason="hotfix", now=SUNDAY, break_glass=True) is None
    no_reason = gov.promote_refusal(r, GROUPS, user="bob", reason=None, now=SUNDAY, break_glass=True)
    assert no_reason is not None and no_reason.kind is Refused.REASON_REQUIRED


def test_break_glass_only_by_whom_the_policy_names() -> None:
    r = rule(windows=[{"cron": "* 9-16 * * 1-5"}], promoters=["group:leads", "group:oncall"], breakGlass=["carol"])
    refused = gov.promote_refusal(r, GROUPS, user="bob", reason="hotfix", now=SUNDAY, break_glass=True)
    assert refused is not None and refused.kind is Refused.BREAK_GLASS_NOT_ALLOWED
    assert gov.promote_refusal(r, GROUPS, user="carol", reason="hotfix", now=SUNDAY, break_glass=True) is None


def test_windows_follow_cron_and_time_zones() -> None:
    assert OFFICE.matches(MONDAY) and not OFFICE.matches(SUNDAY)
    # 10:30 UTC is 19:30 in Tokyo: outside 9-16 there
    assert not Window(cron="* 9-16 * * 1-5", timezone="Asia/Tokyo").matches(MONDAY)
    assert Window(cron="*/15 10 * * *").matches(MONDAY)  # minute 30 is a multiple of 15
    assert not Window(cron="*/20 10 * * *").matches(MONDAY)
    # both day fields restricted: either matches (cron's rule) -- the 30th, or a Sunday
    assert Window(cron="* * 30 * 0").matches(MONDAY) and Window(cron="* * 30 * 0").matches(SUNDAY)
    assert Window(cron="* * * * 7").matches(SUNDAY)  # 7 is Sunday too


@pytest.mark.parametrize(
    ("cron", "words"),
    [("* * * *", "needs 5 fields"), ("61 * * * *", "out of range"), ("a * * * *", "bad minute"), ("*/0 * * * *", "")],
)
def test_bad_cron_is_one_clear_error_naming_the_field(cron: str, words: str) -> None:
    doc = {"spec": {"systems": {"s": {"windows": [{"cron": cron}]}}}}
    with pytest.raises(SpecError) as err:
        policy_spec.from_document({"apiVersion": "modship.dev/v1alpha1", "kind": "Policy", **doc})
    assert err.value.field == "spec.systems.s.windows[0].cron" and words in str(err.value)


def test_policy_refuses_unknown_groups_and_more_approvals_than_approvers() -> None:
    base = {"apiVersion": "modship.dev/v1alpha1", "kind": "Policy"}
    with pytest.raises(SpecError, match="unknown group 'nobody'"):
        policy_spec.from_document({**base, "spec": {"systems": {"s": {"approvers": ["group:nobody"]}}}})
    with pytest.raises(SpecError, match="3 required of only 2 approvers"):
        doc = {"groups": {"g": ["a", "b"]}, "systems": {"s": {"approvers": ["group:g"], "approvals": 3}}}
        policy_spec.from_document({**base, "spec": doc})
    with pytest.raises(SpecError, match="unknown time zone"):
        mars = {"windows": [{"cron": "* * * * *", "timezone": "Mars/Base"}]}
        policy_spec.from_document({**base, "spec": {"systems": {"s": mars}}})


def test_a_systems_rule_wins_then_the_strictest_tier() -> None:
    tiers = {"stable": {"approvals": 1}, "experimental": {"approvals": 0}}
    systems = {"special": {"approvals": 2}}
    p = policy_spec.from_document({"kind": "Policy", "spec": {"tiers": tiers, "systems": systems}})
    from controller.spec.modules import Stability

    assert p.rule("special", {Stability.STABLE}).approvals == 2
    assert p.rule("other", {Stability.STABLE, Stability.EXPERIMENTAL}).approvals == 1
    assert p.rule("other", {Stability.EXPERIMENTAL}).approvals == 0
    assert p.rule("other", set()) == Rule()


# -- who may approve -------------------------------------------------------------------------------


def test_self_approval_is_refused() -> None:
    refused = gov.approve_refusal(release(rule(approvals=1)), user="dave", reason="mine")
    assert refused is not None and refused.kind is Refused.SELF_APPROVAL


def test_approval_by_someone_not_an_approver_is_refused() -> None:
    r = rule(approvers=["group:leads"], approvals=1)
    refused = gov.approve_refusal(release(r), user="mallory", reason="ok")
    assert refused is not None and refused.kind is Refused.NOT_AN_APPROVER
    assert gov.approve_refusal(release(r), user="alice", reason="ok") is None


def test_approval_without_a_required_reason_and_twice_is_refused() -> None:
    r = rule(approvals=1, requireReason=True)
    refused = gov.approve_refusal(release(r), user="alice", reason=None)
    assert refused is not None and refused.kind is Refused.REASON_REQUIRED
    twice = gov.approve_refusal(release(r, (yes("alice"),)), user="alice", reason="again")
    assert twice is not None and twice.kind is Refused.ALREADY_DECIDED


def test_a_module_owner_may_approve_a_change_to_their_module() -> None:
    r = rule(approvers=["group:leads"], approvals=1, ownerApproval=True)
    assert gov.approve_refusal(release(r, owners={"encoder": ("erin",)}), user="erin", reason="ok") is None


# -- the gate --------------------------------------------------------------------------------------


IN_FLIGHT = RolloutStatus(phase=Phase.PROGRESSING, stable="A", canary="B", started=100.0, step=3)


def test_n_of_m_approvals_and_only_valid_ones_count() -> None:
    r = rule(approvers=["group:leads", "carol"], approvals=2)
    g = gov.gate(release(r), IN_FLIGHT, 200.0)
    assert g.waiting is Waiting.APPROVAL and g.reason is Reason.AWAITING_APPROVAL and "2 more" in g.message
    # the author's own approval and an outsider's do not count
    g = gov.gate(release(r, (yes("dave"), yes("mallory"), yes("alice"))), IN_FLIGHT, 200.0)
    assert g.waiting is Waiting.APPROVAL and "1 more approval(s) of 2" in g.message
    # the same person twice counts once
    assert not gov.gate(release(r, (yes("alice"), yes("alice"))), IN_FLIGHT, 200.0).open
    assert gov.gate(release(r, (yes("alice"), yes("carol"))), IN_FLIGHT, 200.0).open


def test_owner_approval_missing_holds_the_canary() -> None:
    r = rule(approvals=1, ownerApproval=True)
    owners = {"encoder": ("erin", "frank"), "head": ("gina",)}
    g = gov.gate(release(r, (yes("alice"), yes("erin")), owners=owners), IN_FLIGHT, 200.0)
    assert g.waiting is Waiting.APPROVAL and "an owner of head (gina)" in g.message and "encoder" not in g.message
    assert gov.gate(release(r, (yes("erin"), yes("gina")), owners=owners), IN_FLIGHT, 200.0).open


def test_an_owner_who_authored_the_change_cannot_approve_it() -> None:
    r = rule(ownerApproval=True)
    g = gov.gate(release(r, (yes("dave"),), owners={"head": ("dave",)}), IN_FLIGHT, 200.0)
    assert g.waiting is Waiting.APPROVAL


def test_soak_not_elapsed_holds_then_releases() -> None:
    r = rule(minSoak="10m")
    g = gov.gate(release(r), IN_FLIGHT, 100.0 + 599)
    assert g.waiting is Waiting.SOAK and g.reason is Reason.AWAITING_SOAK and g.until == 700.0
    assert gov.gate(release(r), IN_FLIGHT, 700.0).open
    assert gov.gate(release(r, break_glass=True), IN_FLIGHT, 150.0).open  # break glass skips the soak


def test_a_rejection_by_an_approver_rejects_and_by_the_author_does_not() -> None:
    r = rule(approvals=1, approvers=["group:leads"])
    g = gov.gate(release(r, (Approval("bob", False, 1.0, "accuracy dropped"),)), IN_FLIGHT, 200.0)
    assert g.rejected == "rejected by bob: accuracy dropped"
    assert gov.gate(release(r, (Approval("dave", False, 1.0),)), IN_FLIGHT, 200.0).rejected is None


def test_the_gate_only_governs_the_revision_it_was_given_for() -> None:
    assert gov.gate(release(rule(approvals=1)), replace(IN_FLIGHT, canary="C"), 200.0).open
    assert gov.gate(None, IN_FLIGHT, 200.0).open


def test_changes_round_trip_through_storage() -> None:
    c = Change("B", "dave", 1.0, "why", True, ("stable",), {"enc": ("erin",)})
    assert Change.from_storage(c.for_storage()) == c
    p = policy_spec.from_document({"kind": "Policy", "spec": {"tiers": {"stable": {"approvals": 1}}}})
    assert gov.release(p, "sys", c, ()).rule.approvals == 1


# -- the state machine held by the gate ------------------------------------------------------------


def _rollout() -> Rollout:
    doc = {
        "apiVersion": "modship.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "sys"},
        "spec": {
            "system": "sys",
            "revision": "B",
            "strategy": {"canary": {"steps": [{"setWeight": 20}, {"setWeight": 40}]}},
            "policies": {"progressDeadline": 60},
        },
    }
    return Rollout.model_validate(doc)


OK = Health(stable_ready=True, canary_ready=True)


NONE = Controls()


def _run(r: Rollout, s: RolloutStatus, now: float, rel: Release | None, controls: Controls = NONE) -> machine.Decision:
    return machine.step(r, s, Observations(health=OK, controls=controls, release=rel), now)


def test_the_rollout_waits_in_awaiting_approval_then_promotes() -> None:
    r = _rollout()
    s = RolloutStatus(stable="A", spec_hash=machine.spec_hash(r), phase=Phase.IDLE)
    rel = release(rule(approvals=1))
    d = _run(r, s, 1000.0, rel)
    s = d.status
    assert s.phase is Phase.PROGRESSING and s.reason is Reason.AWAITING_APPROVAL and s.waiting is Waiting.APPROVAL
    assert s.traffic.weight == 40  # held at its last weight
    said = [a for a in d.actions if getattr(a, "reason", None) is Reason.AWAITING_APPROVAL]
    assert len(said) == 1
    # a later cycle says nothing new; past the progress deadline it is still waiting, not aborted
    d = _run(r, s, 1000.0 + 3600, rel)
    assert d.status.reason is Reason.AWAITING_APPROVAL and d.status.phase is Phase.PROGRESSING
    assert not [a for a in d.actions if getattr(a, "reason", None) is Reason.AWAITING_APPROVAL]
    d = _run(r, d.status, 1000.0 + 3601, release(rule(approvals=1), (yes("alice"),)))
    assert d.status.phase is Phase.PROMOTED and d.status.stable == "B"


def test_promote_full_waits_for_approval_too() -> None:
    r = _rollout()
    s = RolloutStatus(stable="A", spec_hash=machine.spec_hash(r), phase=Phase.IDLE)
    d = _run(r, s, 1000.0, release(rule(approvals=1)), Controls(promote_full=1000.5))
    assert d.status.reason is Reason.AWAITING_APPROVAL and d.status.in_flight


def test_a_rejection_aborts_the_canary_to_stable() -> None:
    r = _rollout()
    s = RolloutStatus(stable="A", spec_hash=machine.spec_hash(r), phase=Phase.IDLE)
    s = _run(r, s, 1000.0, release(rule(approvals=1))).status
    d = _run(r, s, 1001.0, release(rule(approvals=1), (Approval("alice", False, 1001.0, "no"),)))
    assert d.status.phase is Phase.ABORTED and d.status.reason is Reason.REJECTED
    assert d.status.traffic.weight == 0 and d.status.stable == "A"
    assert any(getattr(a, "reason", None) is Reason.REJECTED for a in d.actions)


# -- the Kubernetes control plane, on its in-memory Rollout resources ---------------------------------


def test_kube_promote_checks_the_namespace_policy_and_stamps_break_glass() -> None:
    from controller.errors import Forbidden
    from controller.spec import control
    from tests.unit.test_control import IDLE, A, C, kube

    k, mem = kube(IDLE, target=A)
    mem.governance = policy_spec.from_document(
        {"kind": "Policy", "spec": {"systems": {"sys": {"promoters": ["alice"], "windows": [{"cron": "* * 31 2 *"}]}}}}
    )  # February 31st: never inside the window
    with pytest.raises(Forbidden, match="memory-user may not promote"):
        k.promote("sys", control.PromoteRequest(revision=C), actor=control.Actor(user="x", reason="why"))
    mem.caller = "alice"
    with pytest.raises(Forbidden, match="outside the change windows"):
        k.promote("sys", control.PromoteRequest(revision=C), actor=control.Actor(user="x", reason="why"))
    with pytest.raises(Forbidden, match="needs a reason"):
        k.promote("sys", control.PromoteRequest(revision=C, breakGlass=True), actor=control.Actor(user="x"))
    k.promote("sys", control.PromoteRequest(revision=C, breakGlass=True), actor=control.Actor(user="x", reason="INC-1"))
    assert mem.authors["sys"] == ("alice", "INC-1") and mem.read("sys").target == C


def test_kube_approve_records_a_decision_on_the_canary_in_flight_only() -> None:
    from controller.errors import Conflict
    from controller.spec import control
    from tests.unit.test_control import FLYING, IDLE, B, kube

    me = control.Actor(user="ignored", reason="ok")
    k, mem = kube(IDLE)
    with pytest.raises(Conflict, match="not awaiting approval"):
        k.approve("sys", control.ApproveRequest(), actor=me)
    k, mem = kube(FLYING)
    with pytest.raises(Conflict):
        k.approve("sys", control.ApproveRequest(revision="r" + "f" * 12), actor=me)
    done = k.approve("sys", control.ApproveRequest(approve=False), actor=me)
    assert (done.revision, done.approve) == (B, False)
    assert [(a.user, a.approve, a.reason) for a in mem.approvals("sys", B)] == [("memory-user", False, "ok")]
