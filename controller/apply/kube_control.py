"""The control plane on Kubernetes: the ``Control`` port over Rollout resources.

Requests become spec fields and command annotations that the operator consumes; the documents
come from the Rollout's status. Revisions are built images on Kubernetes, so ``promote`` names one
(composing it from modules is CI's job). Revision numbers count revisions in the order the status
history (its last 20 outcomes) first names them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from controller import ports
from controller.apply import control as rules
from controller.apply import governance
from controller.errors import Conflict, Forbidden, NotFound, SpecError
from controller.plan.governance import Change, refused_target
from controller.plan.status import Phase
from controller.spec import control
from controller.spec.modules import Stability

_REVISION = re.compile(r"^r[0-9a-f]{12}$")


class KubeControl:
    def __init__(self, resources: ports.RolloutResources, *, clock: Callable[[], float] = time.time) -> None:
        self.resources = resources
        self._now = clock

    @property
    def namespace(self) -> str:
        return self.resources.namespace

    # -- reading -----------------------------------------------------------------------------------
    def systems(self) -> list[control.Summary]:
        return [_summary(x) for x in self.resources.records()]

    def status(self, system: str) -> control.StatusDocument:
        x = self.resources.read(system)
        numbers = rules.numbers(x.status, x.target)
        refs = {
            rev: control.RevisionRef(revision=rev, number=n, modules=x.modules if rev == x.target else [])
            for rev, n in numbers.items()
        }
        facts = rules.Facts(
            target=x.target,
            revisions=refs,
            toggles=x.toggles,
            paused=x.paused,
            managed=x.managed,
            namespace=self.namespace,
            conditions=x.conditions,
            shown=x.shown,
        )
        return rules.status_document(system, x.rollout, x.status, facts)

    def history(self, system: str) -> list[control.HistoryRow]:
        x = self.resources.read(system)
        s = x.status
        revisions = [
            rules.Revision(n, rev, min((h.at for h in s.history if h.revision == rev), default=None))
            for rev, n in rules.numbers(s, x.target).items()
        ]
        return rules.history(s, revisions)

    def events(self, system: str, *, limit: int = 200) -> list[control.EventRow]:
        return self.resources.events(system, limit=limit)

    # -- requests ----------------------------------------------------------------------------------
    def command(self, system: str, cmd: control.Command, *, actor: control.Actor) -> control.CommandResult:
        now = self._now()
        asked = self._request(cmd.value, actor, now)
        match cmd:
            case control.Command.PAUSE:
                self.resources.write(system, paused=True, request=asked)
            case control.Command.RESUME:
                self.resources.write(system, paused=False, commands={"resume": now}, request=asked)
            case control.Command.ABORT:
                x = self.resources.read(system)
                rules.ensure_abortable(system, x.status, x.target)
                self.resources.write(system, commands={"abort": now}, request=asked)
            case control.Command.RETRY:
                self.resources.write(system, commands={"retry": now}, request=asked)
            case control.Command.PROMOTE_FULL:
                self.resources.write(system, commands={"promote_full": now}, request=asked)
            case control.Command.ROLLBACK:
                s = self.resources.read(system).status
                if s.in_flight:
                    self.resources.write(system, commands={"abort": now}, request=asked)
                    return control.CommandResult(system=system, message=rules.aborting(s))
                d = self.undo(system, control.UndoRequest(), actor=actor)
                return control.CommandResult(
                    system=system, message=f"rolling back to revision {d.number} ({d.revision})"
                )
        return control.CommandResult(system=system, command=cmd.value)

    def promote(self, system: str, req: control.PromoteRequest, *, actor: control.Actor) -> control.PromoteResult:
        x = self.resources.read(system)
        now = self._now()
        asked = self._request("promote", actor, now)
        if req.revision is None:
            if not req.full or req.system is not None:
                raise SpecError(
                    'on Kubernetes, promote names a built revision: {"revision": "r<12 hex>"}', field="revision"
                )
            self.resources.write(system, commands={"promote_full": now}, request=asked)
            return control.PromoteResult(system=system, promote_full=True)
        if not _REVISION.match(req.revision):
            raise SpecError(f"{req.revision!r} is not a revision (r followed by 12 hex digits)", field="revision")
        s = x.status
        refused = refused_target(x.conditions, x.target)  # by the operator's policy: replaceable
        rules.ensure_no_rollout(system, s, None if refused else x.target, revision=req.revision)
        rules.ensure_new(system, s, req.revision)
        self._check_policy(system, req, actor, now)
        # a new target starts clean: a standing pause does not carry over
        self.resources.write(
            system,
            target=(req.revision, req.modules),
            paused=False,
            commands={"promote_full": now + 0.001} if req.full else None,
            request=asked,
            break_glass=actor.reason if req.break_glass else None,
        )
        number = rules.numbers(s, req.revision)[req.revision]
        return control.PromoteResult(
            system=system,
            revision=req.revision,
            number=number,
            changes=req.modules,
            overrides=[],
            rollback=req.revision == s.previous_stable,
        )

    def undo(self, system: str, req: control.UndoRequest, *, actor: control.Actor) -> control.UndoResult:
        x = self.resources.read(system)
        s = x.status
        numbers = rules.numbers(s, x.target)
        if req.to_revision is None:
            rev = rules.previous_revision(system, s)
        else:
            rev = next((r for r, n in numbers.items() if n == req.to_revision), "")
            if not rev:
                raise NotFound(f"{system} has no revision {req.to_revision} (see history)")
        rules.ensure_can_go_back(system, s, x.target, rev, numbers[rev])
        asked = self._request("undo", actor, self._now())
        self.resources.write(system, target=(rev, [f"undo to revision {numbers[rev]}"]), paused=False, request=asked)
        return control.UndoResult(system=system, revision=rev, number=numbers[rev])

    def toggle(self, system: str, req: control.ToggleRequest, *, actor: control.Actor) -> control.ToggleResult:
        toggles = self.resources.read(system).toggles
        toggles[req.flag] = {"enabled": req.enabled, "percent": float(req.percent)}
        self.resources.write(system, toggles=toggles, request=self._request("toggle", actor, self._now()))
        return control.ToggleResult(system=system, flag=req.flag, enabled=req.enabled, percent=req.percent)

    def approve(self, system: str, req: control.ApproveRequest, *, actor: control.Actor) -> control.ApproveResult:
        """An Approval object in the Rollout's namespace; the operator judges it against the policy
        (who counts, how many) when it reconciles."""
        s = self.resources.read(system).status
        revision = req.revision or (s.canary if s.in_flight else None)
        if revision is None or not s.in_flight or revision != s.canary:
            what = f"revision {req.revision}" if req.revision else "a change"
            raise Conflict(f"{system}: {what} is not awaiting approval (see `modship status {system}`)")
        self.resources.decide(system, revision=revision, approve=req.approve, reason=actor.reason)
        return control.ApproveResult(system=system, revision=revision, approve=req.approve, missing=[])

    def _check_policy(self, system: str, req: control.PromoteRequest, actor: control.Actor, now: float) -> None:
        """Who may promote, windows, reasons: checked here, by the client (advisory: on Kubernetes
        the right to change a Rollout is RBAC's; approvals and soak are the operator's to enforce)."""
        if req.break_glass and not actor.reason:
            raise Forbidden(f"{system}: --break-glass needs a reason: give --reason", kind="ReasonRequired")
        p = self.resources.policy()
        if p is not None:
            user, why = self.resources.user(), actor.reason or ""
            change = Change(req.revision or "", user, now, why, req.break_glass, (Stability.STABLE.value,))
            governance.check_promote(p, system, change, now=now)

    def _request(self, what: str, actor: control.Actor, now: float) -> dict[str, Any]:
        """The request as recorded on the Rollout: the user is the API server's view of the caller
        (whatever ``actor.user`` said), the reason the person's own words."""
        return {"what": what, "user": self.resources.user(), "reason": actor.reason, "at": now}


def _summary(x: ports.RolloutRecord) -> control.Summary:
    s = x.status
    return control.Summary(
        system=x.name,
        phase=x.shown[0],
        stable=s.stable,
        canary=s.canary if s.in_flight or s.phase is Phase.ABORTED else None,
        weight=s.traffic.weight if s.in_flight else 0.0,
        target=x.target,
        reason=x.shown[1],
    )
