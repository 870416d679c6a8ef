"""Governance use cases, once for every backend: describe a change, check a promote or an approval
against the policy (raising ``Forbidden``), the governance part of the status, and audit entries.

The decisions themselves are ``plan.governance`` (pure); this module only turns their refusals into
errors and their inputs out of locks and records.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.compose.revision import Lock
from controller.errors import Conflict, Forbidden
from controller.plan import governance as gov
from controller.plan.actions import Event
from controller.plan.audit import Action
from controller.plan.governance import Approval, Change, Release
from controller.plan.reasons import Reason
from controller.spec import control
from controller.spec.policy import Policy

CONTROLLER = "modship-controller"  # the actor of what the controller does on its own
STARTED = (Reason.ROLLOUT_STARTED, Reason.ROLLOUT_RESTARTED)  # a new canary starts


def change_of(stable: Lock | None, new: Lock, *, author: str, reason: str, break_glass: bool, now: float) -> Change:
    """The change from ``stable`` to ``new``: the tiers and owners of every module it adds or moves."""
    before = {m.name: m.version for m in stable.modules.values()} if stable is not None else {}
    moved = [m for m in new.modules.values() if before.get(m.name) != m.version]
    return Change(
        revision=new.revision,
        author=author,
        at=now,
        reason=reason,
        break_glass=break_glass,
        tiers=tuple(sorted({m.manifest.metadata.stability.value for m in moved})),
        owners={m.name: tuple(m.manifest.metadata.owners) for m in sorted(moved, key=lambda m: m.name)},
    )


def check_promote(policy: Policy, system: str, change: Change, *, now: float) -> None:
    rule = gov.rule_for(policy, system, change)
    refused = gov.promote_refusal(
        rule, policy.spec.groups, user=change.author, reason=change.reason, now=now, break_glass=change.break_glass
    )
    if refused is not None:
        raise Forbidden(f"{system}: {refused.message}", kind=refused.kind.value)


def check_approve(
    system: str, release: Release | None, *, user: str, reason: str | None, revision: str | None
) -> Release:
    """The release ``user`` decides on. Conflict when no change (or not ``revision``) awaits a
    decision; Forbidden when the policy does not let ``user`` decide on it."""
    if release is None or (revision is not None and revision != release.revision):
        what = f"revision {revision}" if revision else "a change"
        raise Conflict(f"{system}: {what} is not awaiting approval (see `modship status {system}`)")
    refused = gov.approve_refusal(release, user=user, reason=reason)
    if refused is not None:
        raise Forbidden(f"{system}: {refused.message}", kind=refused.kind.value)
    return release


def view(release: Release | None, change: Change | None) -> control.Governance | None:
    """The governance part of the status document (None: no change recorded)."""
    if change is None:
        return None
    rule = release.rule if release is not None else None
    return control.Governance(
        revision=change.revision,
        author=change.author,
        reason=change.reason or None,
        break_glass=change.break_glass,
        approvals_required=rule.approvals if rule is not None else 0,
        decisions=[
            control.ApprovalRow(user=a.user, approve=a.approve, at=a.at, reason=a.reason or None)
            for a in (release.approvals if release is not None else ())
        ],
        missing=gov.missing(release) if release is not None else [],
    )


def entry(
    action: Action,
    *,
    system: str | None,
    actor: str,
    reason: str | None,
    now: float,
    before: Any = None,
    after: Any = None,
    **extra: Any,
) -> dict[str, Any]:
    """An audit entry's body (``AuditLog.append`` seals it into the chain)."""
    return {
        "at": now,
        "time": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="milliseconds"),
        "action": action.value,
        "system": system,
        "actor": actor,
        "reason": reason or None,
        "before": before,
        "after": after,
        **extra,
    }


def controller_action(reason: Reason) -> Action | None:
    """The audit action of a transition the controller makes on its own (None: not audited)."""
    if reason is Reason.PROMOTED:
        return Action.PROMOTED
    if reason is Reason.ROLLED_BACK:
        return Action.ROLLBACK
    return Action.ABORT if reason.rolled_back else None


def release_facts(release: Release | None) -> dict[str, Any]:
    """Who approved the canary and who authored it, for the audit entry of its promotion."""
    if release is None:
        return {}
    approvals = [a.user for a in gov.counted(release) if a.approve]
    return {"author": release.author or None, "approvedBy": approvals, "breakGlass": release.break_glass}


def approval(user: str, *, approve: bool, reason: str | None, now: float) -> Approval:
    return Approval(user=user, approve=approve, at=now, reason=reason or "")


# -- what a cycle tells of governance: Events and audit entries (the operator's and the local loop's)


@dataclass(frozen=True, slots=True)
class Held:
    """A new target the policy does not let start: the condition it shows, and on the first cycle
    that shows it (not on every cycle) the Event and the audit entry that tell of it."""

    reason: Reason
    message: str
    event: Event | None  # None: the condition already says so
    audit: dict[str, Any] | None


def held(
    refused: gov.Refusal,
    *,
    target: str | None,
    shown: Sequence[Mapping[str, Any]],
    system: str,
    author: str | None,
    now: float,
    **extra: Any,
) -> Held:
    """How a refused target is reported: ``shown`` are the conditions the Rollout shows now."""
    reason = Reason.OUTSIDE_WINDOW if refused.kind is gov.Refused.OUTSIDE_WINDOW else Reason.FORBIDDEN
    message = gov.refusal_message(target, refused)
    condition = next((c for c in shown if c.get("type") == gov.CONDITION), {})
    if (condition.get("reason"), condition.get("message")) == (reason.value, message):
        return Held(reason, message, None, None)
    body = entry(
        Action.REFUSED, system=system, actor=author or "unknown", reason=message, now=now, **extra,
        event=reason.value, after={"revision": target, "refused": refused.kind.value},
    )  # fmt: skip
    return Held(reason, message, Event(reason, message, warning=True), body)


def break_glass(events: Sequence[Event], *, target: str | None, author: str | None, why: str | None) -> list[Event]:
    """The ``BreakGlass`` Event of a new canary that starts by breaking glass (``why``: the reason
    its author gave; None: it does not break glass)."""
    if why is None or not any(ev.reason in STARTED for ev in events):
        return []
    return [Event(Reason.BREAK_GLASS, f"{author or 'an unknown author'} broke glass for {target}: {why}", warning=True)]


def transition_entries(
    ev: Event,
    *,
    system: str,
    now: float,
    release: Release | None = None,
    started_by: str | None = None,
    glass: Sequence[Event] = (),
    glass_why: str | None = None,
    target: str | None = None,
    **extra: Any,
) -> list[dict[str, Any]]:
    """The audit entries of one transition: the controller's own (promoted, rolled back, aborted),
    with who authored and approved the canary (``release``); a new canary under ``started_by`` as a
    promote (the operator, where the Rollout's author annotation says who; locally people's
    requests are audited when accepted, so None), with one ``override`` per ``glass`` Event."""
    action, actor = controller_action(ev.reason), CONTROLLER
    if started_by is not None and ev.reason in STARTED:
        action, actor = Action.PROMOTE, started_by
    if action is None:
        return []
    facts = release_facts(release)
    out = [entry(action, system=system, actor=actor, reason=ev.message, now=now, **extra,
                 event=ev.reason.value, after=facts or None)]  # fmt: skip
    for g in glass:
        out.append(entry(Action.OVERRIDE, system=system, actor=actor, reason=glass_why, now=now, **extra,
                         event=g.reason.value, after={"revision": target, "breakGlass": True}))  # fmt: skip
    return out
