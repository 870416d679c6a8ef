"""Governance on the local runtime: the policy checks of a promote, approvals and rejections, and
the audit entries of people's requests. ``LocalControl`` calls it; state is in
``adapters.local_governance`` and the audit log in ``$MODSHIP_HOME/audit.jsonl``.
"""

from __future__ import annotations

import time
from typing import Any

from controller.apply import governance
from controller.apply.local_controller import LocalController
from controller.compose.revision import Lock
from controller.plan.actions import Event
from controller.plan.audit import Action
from controller.plan.governance import Change
from controller.plan.reasons import Reason
from controller.spec import control
from controller.spec.policy import Policy


class LocalApprovals:
    def __init__(self, c: LocalController) -> None:
        self.c = c
        self.gov = c.governance

    def precheck(self, system: str, *, actor: control.Actor, break_glass: bool) -> None:
        """Before anything is built: a system with its own rule is checked at once (a tier's rule
        needs the composed revision to know which modules change: ``check_promote``)."""
        policy = self.gov.policy()
        if system in policy.spec.systems:
            now = time.time()
            change = Change("", actor.user, now, actor.reason or "", break_glass)
            governance.check_promote(policy, system, change, now=now)

    def check_promote(
        self, system: str, new: Lock, *, actor: control.Actor, break_glass: bool, now: float | None = None
    ) -> Change:
        """The change ``new`` makes, if the policy lets ``actor`` start it now (else Forbidden)."""
        now = time.time() if now is None else now
        s = self.c.store.status(system)
        stable = self.c.store.lock(system, s.stable) if s.stable else None
        change = governance.change_of(
            stable, new, author=actor.user, reason=actor.reason or "", break_glass=break_glass, now=now
        )
        governance.check_promote(self.gov.policy(), system, change, now=now)
        return change

    def check_full(self, system: str, *, actor: control.Actor, now: float) -> None:
        """``promote --full`` skips the remaining steps: only a promoter may, in a window, with a
        reason when the policy wants one (approvals and soak still hold the canary)."""
        s, change = self.c.store.status(system), self.gov.change(system)
        if change is None or not s.in_flight or change.revision != s.canary:
            return
        policy = self.gov.policy()
        asked = Change(change.revision, actor.user, now, actor.reason or "", False, change.tiers, change.owners)
        governance.check_promote(policy, system, asked, now=now)

    def accepted(self, system: str, change: Change, *, number: int, force: list[str]) -> None:
        """Record the change as in flight (its author can no longer approve it) and audit it."""
        self.gov.put_change(system, change)
        after = {"revision": change.revision, "number": number}
        self.record(Action.PROMOTE, system, change.author, change.reason, before=None, after=after)
        if change.break_glass:
            self.record(Action.OVERRIDE, system, change.author, change.reason, after={"breakGlass": True, **after})
            why = f"{change.author} broke glass for {change.revision}: {change.reason}"
            self.c.store.append_event(system, Event(Reason.BREAK_GLASS, why, warning=True), now=change.at)
        if force:
            self.record(Action.OVERRIDE, system, change.author, change.reason, after={"forced": force, **after})

    def requested(
        self, system: str, what: str, detail: str, actor: control.Actor, revision: str | None, *, now: float
    ) -> None:
        """Audit a person's request (``LocalControl`` names it: Abort, Toggle...); a promote is
        audited by ``accepted`` with its change."""
        action = _REQUESTS.get(what)
        if action is None:
            return
        s = self.c.store.status(system) if what != "Deploy" else None
        before = (
            {"stable": s.stable, "canary": s.canary if s.in_flight else None, "phase": s.phase.value} if s else None
        )
        body = governance.entry(
            action, system=system, actor=actor.user, reason=actor.reason, now=now, before=before,
            after={"request": what, "detail": detail, "revision": revision},
        )  # fmt: skip
        self.c.record_audit(body)

    def decide(self, system: str, req: control.ApproveRequest, *, actor: control.Actor) -> control.ApproveResult:
        s = self.c.store.status(system)
        release = self.c.release(system, s) if s.in_flight else None
        release = governance.check_approve(system, release, user=actor.user, reason=actor.reason, revision=req.revision)
        now = time.time()
        decision = governance.approval(actor.user, approve=req.approve, reason=actor.reason, now=now)
        self.gov.add_approval(system, release.revision, decision)
        action = Action.APPROVE if req.approve else Action.REJECT
        self.record(action, system, actor.user, actor.reason, after={"revision": release.revision})
        if req.approve:
            why = f"{release.revision} approved by {actor.user}" + (f": {actor.reason}" if actor.reason else "")
            self.c.store.append_event(system, Event(Reason.APPROVED, why), now=now)
        self.c.wake(system)
        after = self.c.release(system, s)
        missing = governance.view(after, self.gov.change(system))
        return control.ApproveResult(
            system=system, revision=release.revision, approve=req.approve, missing=missing.missing if missing else []
        )

    def governance_of(self, system: str) -> control.Governance | None:
        s = self.c.store.status(system)
        change = self.gov.change(system)
        if change is None or change.revision not in (s.canary, s.stable):
            return None
        release = self.c.release(system, s)
        return governance.view(release, change)

    def flag_history(self, system: str, rows: list[control.HistoryRow]) -> list[control.HistoryRow]:
        """History rows with the change's break-glass among its overrides."""
        change = self.gov.change(system)
        if change is None or not change.break_glass:
            return rows
        mark = f"break-glass by {change.author}: {change.reason}"
        return [
            r.model_copy(update={"overrides": [*r.overrides, mark]}) if r.revision == change.revision else r
            for r in rows
        ]

    def set_policy(self, p: Policy, *, actor: control.Actor) -> None:
        before = self.gov.policy().dump() if self.gov.policy_path.exists() else None
        self.gov.set_policy(p)
        self.record(Action.POLICY, None, actor.user, actor.reason, before=before, after=p.dump())

    def record(
        self,
        action: Action,
        system: str | None,
        user: str,
        reason: str | None,
        *,
        before: Any = None,
        after: Any = None,
    ) -> None:
        body = governance.entry(
            action, system=system, actor=user, reason=reason, now=time.time(), before=before, after=after
        )
        self.c.record_audit(body)


_REQUESTS = {
    "Deploy": Action.DEPLOY,
    "Abort": Action.ABORT,
    "Rollback": Action.ROLLBACK,
    "Undo": Action.UNDO,
    "Toggle": Action.TOGGLE,
    "PromoteFull": Action.PROMOTE,
    "Pause": Action.COMMAND,
    "Resume": Action.COMMAND,
    "Retry": Action.COMMAND,
    "Delete": Action.COMMAND,
}
