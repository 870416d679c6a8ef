"""Governance decisions, pure: may this person promote or approve, and may the canary become stable.

``promote_refusal`` and ``approve_refusal`` answer a request (None: allowed); ``gate`` is what the
rollout state machine asks before a canary becomes stable, from the ``Release`` the backend observes
(the rule in force, the change's author and the approvals given). Refusals are typed, so callers and
tests decide on the kind, never on the words.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.plan.reasons import Reason, Waiting
from controller.plan.status import RolloutStatus
from controller.spec.modules import Stability
from controller.spec.policy import Policy, Rule, members

CONDITION = "Governance"  # the Rollout condition (Kubernetes) of a new target the policy does not let start


class Refused(enum.StrEnum):
    NOT_A_PROMOTER = "NotAPromoter"
    NOT_AN_APPROVER = "NotAnApprover"
    SELF_APPROVAL = "SelfApproval"
    REASON_REQUIRED = "ReasonRequired"
    OUTSIDE_WINDOW = "OutsideWindow"
    BREAK_GLASS_NOT_ALLOWED = "BreakGlassNotAllowed"
    ALREADY_DECIDED = "AlreadyDecided"


@dataclass(frozen=True, slots=True)
class Refusal:
    kind: Refused
    message: str


@dataclass(frozen=True, slots=True)
class Approval:
    """One person's decision on a revision (``approve`` False: a rejection)."""

    user: str
    approve: bool
    at: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Release:
    """What governs the canary in flight: observed by the backend, judged by ``gate``."""

    revision: str
    rule: Rule
    groups: Mapping[str, tuple[str, ...]]
    author: str
    break_glass: bool = False
    owners: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # changed module -> its owners
    approvals: tuple[Approval, ...] = ()


@dataclass(frozen=True, slots=True)
class Gate:
    """``waiting`` None and ``rejected`` None: the canary may become stable."""

    waiting: Waiting | None = None
    reason: Reason = Reason.NONE
    message: str = ""
    rejected: str | None = None
    until: float | None = None  # when a soak ends (to be looked at again then)

    @property
    def open(self) -> bool:
        return self.waiting is None and self.rejected is None


OPEN = Gate()


def _who(rule_members: tuple[str, ...], groups: Mapping[str, tuple[str, ...]]) -> frozenset[str]:
    return members(dict(groups), rule_members)


def promote_refusal(
    rule: Rule,
    groups: Mapping[str, tuple[str, ...]],
    *,
    user: str,
    reason: str | None,
    now: float,
    break_glass: bool = False,
) -> Refusal | None:
    """May ``user`` start rolling out a change now?"""
    if rule.promoters and user not in _who(rule.promoters, groups):
        return Refusal(Refused.NOT_A_PROMOTER, f"{user} may not promote (promoters: {', '.join(rule.promoters)})")
    if (rule.require_reason or break_glass) and not (reason or "").strip():
        why = "--break-glass needs a reason" if break_glass else "this system's policy requires a reason"
        return Refusal(Refused.REASON_REQUIRED, f"{why}: give --reason")
    if break_glass:
        allowed = rule.break_glass or rule.promoters
        if allowed and user not in _who(allowed, groups):
            return Refusal(Refused.BREAK_GLASS_NOT_ALLOWED, f"{user} may not break glass ({', '.join(allowed)})")
        return None
    if rule.windows and not any(w.matches(now) for w in rule.windows):
        crons = "; ".join(f"{w.cron} ({w.timezone})" for w in rule.windows)
        return Refusal(Refused.OUTSIDE_WINDOW, f"outside the change windows [{crons}]: wait, or --break-glass")
    return None


def _eligible(release: Release, user: str) -> Refusal | None:
    """Is ``user`` someone whose decision counts on this change (never its author)?"""
    rule = release.rule
    if user == release.author:
        return Refusal(Refused.SELF_APPROVAL, f"{user} made this change and cannot approve or reject it")
    owners = frozenset(o for os in release.owners.values() for o in os) if rule.owner_approval else frozenset()
    if rule.approvers and user not in _who(rule.approvers, release.groups) | owners:
        return Refusal(Refused.NOT_AN_APPROVER, f"{user} may not approve (approvers: {', '.join(rule.approvers)})")
    return None


def approve_refusal(release: Release, *, user: str, reason: str | None) -> Refusal | None:
    """May ``user`` approve (or reject) the change ``release`` describes?"""
    refused = _eligible(release, user)
    if refused is not None:
        return refused
    if release.rule.require_reason and not (reason or "").strip():
        return Refusal(Refused.REASON_REQUIRED, "this system's policy requires a reason: give --reason")
    if any(a.user == user for a in release.approvals):
        return Refusal(Refused.ALREADY_DECIDED, f"{user} already decided on {release.revision}")
    return None


def counted(release: Release) -> tuple[Approval, ...]:
    """Decisions that count: by an allowed approver (or owner), never by the author, one per user."""
    seen: set[str] = set()
    out = []
    for a in release.approvals:
        if a.user not in seen and _eligible(release, a.user) is None:
            seen.add(a.user)
            out.append(a)
    return tuple(out)


def missing(release: Release) -> list[str]:
    """What approvals are still missing, in words ([] when none)."""
    ok = tuple(a for a in counted(release) if a.approve)
    users = {a.user for a in ok}
    out = []
    if len(ok) < release.rule.approvals:
        out.append(f"{release.rule.approvals - len(ok)} more approval(s) of {release.rule.approvals}")
    if release.rule.owner_approval:
        for module, owners in sorted(release.owners.items()):
            if not owners:  # a module has at least one owner: none known means they could not be read
                out.append(f"an owner of {module} (its owners are unknown: the registry could not be read)")
            elif not users & set(owners):
                out.append(f"an owner of {module} ({', '.join(owners)})")
    return out


def gate(release: Release | None, s: RolloutStatus, now: float) -> Gate:
    """May the canary in flight become stable now? A rejection aborts it; missing approvals or an
    unfinished soak hold it (at its last weight) until they are given or elapse."""
    if release is None or release.revision != s.canary:
        return OPEN
    rejection = next((a for a in counted(release) if not a.approve), None)
    if rejection is not None:
        return Gate(rejected=f"rejected by {rejection.user}" + (f": {rejection.reason}" if rejection.reason else ""))
    soak = release.rule.min_soak
    if soak and not release.break_glass and s.started is not None and now < s.started + soak:
        left = s.started + soak - now
        msg = f"soaking: the canary may become stable in {left:.0f}s (minSoak {soak:g}s)"
        return Gate(waiting=Waiting.SOAK, reason=Reason.AWAITING_SOAK, message=msg, until=s.started + soak)
    need = missing(release)
    if need:
        return Gate(waiting=Waiting.APPROVAL, reason=Reason.AWAITING_APPROVAL, message="awaiting " + "; ".join(need))
    return OPEN


@dataclass(frozen=True, slots=True)
class Change:
    """A change people asked for, as the backend records it when it accepts the promote: who made it
    (the author can never approve it), why, whether glass was broken, and what it touches."""

    revision: str
    author: str
    at: float
    reason: str = ""
    break_glass: bool = False
    tiers: tuple[str, ...] = ()  # stability tiers of the modules it changes
    owners: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # changed module -> owners

    def for_storage(self) -> dict[str, object]:
        return {
            "revision": self.revision,
            "author": self.author,
            "at": self.at,
            "reason": self.reason,
            "breakGlass": self.break_glass,
            "tiers": list(self.tiers),
            "owners": {k: list(v) for k, v in self.owners.items()},
        }

    @classmethod
    def from_storage(cls, d: Mapping[str, Any]) -> Change:
        return cls(
            revision=str(d["revision"]),
            author=str(d["author"]),
            at=float(d["at"]),
            reason=str(d.get("reason") or ""),
            break_glass=bool(d.get("breakGlass", False)),
            tiers=tuple(d.get("tiers") or ()),
            owners={str(k): tuple(v) for k, v in (d.get("owners") or {}).items()},
        )


@dataclass(frozen=True, slots=True)
class ModuleFacts:
    """What the registry says of the module versions a change moves (on Kubernetes, the Rollout's
    ``spec.modules``): their stability tiers and owners. A module whose owners are an empty tuple
    could not be read: its tier counts as ``stable`` and an owner approval it needs cannot be given
    until it is read. ``UNKNOWN`` (no registry, or no module versions named): the ``stable`` tier."""

    tiers: tuple[str, ...] = (Stability.STABLE.value,)
    owners: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    problem: str | None = None  # why some could not be read


UNKNOWN = ModuleFacts()


def rule_for(policy: Policy, system: str, change: Change) -> Rule:
    return policy.rule(system, {Stability(t) for t in change.tiers if t in set(Stability)})


def release(policy: Policy, system: str, change: Change, approvals: tuple[Approval, ...]) -> Release:
    """What governs ``change`` under ``policy``: the Release ``gate`` judges."""
    return Release(
        revision=change.revision,
        rule=rule_for(policy, system, change),
        groups=policy.spec.groups,
        author=change.author,
        break_glass=change.break_glass,
        owners=change.owners,
        approvals=approvals,
    )


def is_new_change(target: str | None, s: RolloutStatus) -> bool:
    """Would the state machine start a new canary for ``target``? What a policy's promote rule holds.
    Going back (to the stable, the warm previous stable, the canary in flight or just aborted: abort,
    undo, retry) is never held."""
    return target is not None and s.stable is not None and target not in (s.stable, s.canary, s.previous_stable)


def admission(policy: Policy | None, system: str, change: Change, s: RolloutStatus, now: float) -> Refusal | None:
    """May the state machine start the change a Rollout's spec asks for (on Kubernetes, where
    nothing but the operator sees every change: ``modship promote`` and a bare ``kubectl edit``
    alike)? The same rule as a promote locally; None: start it (or nothing new to start). A change
    without a known author (``change.author`` empty) is refused where the rule names promoters."""
    if policy is None or not is_new_change(change.revision, s):
        return None
    rule = rule_for(policy, system, change)
    user = change.author or "an unknown author (no modship.dev/author annotation)"
    return promote_refusal(
        rule, policy.spec.groups, user=user, reason=change.reason, now=now, break_glass=change.break_glass
    )


def refusal_message(target: str | None, refused: Refusal) -> str:
    """The message of the ``Governance`` condition (and Event) of a target the operator refused."""
    return f"{target} not started ({refused.kind.value}): {refused.message}"


def refused_target(conditions: Sequence[Mapping[str, Any]], target: str | None) -> bool:
    """Is ``target`` a change the operator refused to start (a ``Governance`` condition naming it)?
    Such a target is not a rollout in progress: another promote may replace it."""
    return target is not None and any(
        c.get("type") == CONDITION and c.get("status") == "False" and str(c.get("message", "")).startswith(f"{target} ")
        for c in conditions
    )


def held_target(s: RolloutStatus) -> str | None:
    """The revision a rollout keeps going to while its spec's new target is refused: the canary in
    flight (it runs on as if nothing was asked), else the stable (nothing starts)."""
    return s.canary if s.in_flight else s.stable
