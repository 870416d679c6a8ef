"""The control plane of the local controller, in process: the ``Control`` port over its state
directory (what the HTTP API serves), plus deploy and delete, which only the local runtime has.

Accepting a request that changes what rolls out is atomic per system: the check of the
preconditions and the write that records the request happen under one lock, and a promote claims
the system while its revision is composed and built (seconds) — so of two promotes, or a promote
and an abort, sent at the same moment exactly one is accepted and the other is refused with a
``Conflict`` naming the rollout in progress.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Iterator
from typing import Any

from controller import ports
from controller.apply import control as rules
from controller.apply import promotion, revision_modules
from controller.apply.approvals import LocalApprovals
from controller.apply.local_controller import LocalController
from controller.errors import Conflict, ModshipError, SpecError
from controller.plan.reasons import Reason
from controller.spec import control
from controller.spec import system as system_spec
from controller.spec.control import Command

TELEMETRY_WINDOW = 30.0
REQUESTS_READ = 100_000  # events read to attribute history to people (the whole timeline in practice)
_WORD = {
    Command.PAUSE: "Pause",
    Command.RESUME: "Resume",
    Command.ABORT: "Abort",
    Command.RETRY: "Retry",
    Command.ROLLBACK: "Rollback",
    Command.PROMOTE_FULL: "PromoteFull",
}


class LocalControl:
    def __init__(self, c: LocalController) -> None:
        self.c = c
        self.store = c.store
        self._lock = threading.Lock()
        self._preparing: dict[str, str] = {}  # system -> what a promote being built rolls out
        self.approvals = LocalApprovals(c)

    # -- reading -----------------------------------------------------------------------------------
    def systems(self) -> list[control.Summary]:
        out = []
        for name in self.store.systems():
            s, r = self.store.status(name), self.store.rollout(name)
            out.append(
                control.Summary(
                    system=name,
                    phase=s.phase.value,
                    stable=s.stable,
                    canary=s.canary,
                    weight=s.traffic.weight,
                    target=r.spec.revision,
                    reason=s.reason.value,
                )
            )
        return out

    def status(self, system: str) -> control.StatusDocument:
        r, s, controls = self.store.load(system)
        m = self.c.systems.get(system)
        port_file = self.store.dir(system) / "port"
        port = port_file.read_text().strip() if port_file.exists() else None
        refs = {
            rec.revision: control.RevisionRef(revision=rec.revision, number=rec.number, modules=rec.modules)
            for rec in self.store.revisions(system)
        }
        facts = rules.Facts(
            target=r.spec.revision,
            revisions=refs,
            toggles=self.store.toggles(system),
            paused=controls.paused,
            managed=m is not None,
            traffic=_traffic(m.runtime.telemetry(TELEMETRY_WINDOW) if m is not None else None),
            router=f"http://127.0.0.1:{port}" if port else None,
            processes=m.runtime.report() if m is not None else None,
            aborted_by=self._aborted_by(system) if s.reason is Reason.ABORTED_BY_USER else None,
        )
        doc = rules.status_document(system, r, s, facts)
        return doc.model_copy(update={"governance": self.approvals.governance_of(system)})

    def _aborted_by(self, system: str) -> control.Actor | None:
        """Who asked for the latest abort (or rollback of a canary in flight)."""
        for e in reversed(self.store.events(system, limit=500)):
            if e.get("actor") and e["reason"] in ("AbortRequested", "RollbackRequested"):
                return control.Actor.model_validate(e["actor"])
        return None

    def history(self, system: str) -> list[control.HistoryRow]:
        self.store.rollout(system)
        revisions = [
            rules.Revision(x.number, x.revision, x.created, x.modules, x.changed, x.overrides)
            for x in self.store.revisions(system)
        ]
        requests = [
            rules.Request(e["at"], e["reason"], control.Actor.model_validate(e["actor"]), e.get("revision"))
            for e in self.store.events(system, limit=REQUESTS_READ)
            if e.get("actor")
        ]
        return self.approvals.flag_history(system, rules.history(self.store.status(system), revisions, requests))

    def events(self, system: str, *, limit: int = 200) -> list[control.EventRow]:
        self.store.rollout(system)
        return [control.EventRow.model_validate(e) for e in self.store.events(system, limit=limit)]

    def modules(self, system: str, number: int) -> dict[str, Any]:
        """The modules behind revision ``number``: versions, contracts, compatibility, lineage."""
        lock = self.store.lock(system, self.store.revision_by_number(system, number).revision)
        try:
            registry: ports.Registry | None = self.c.registry
        except ModshipError as exc:
            registry = None
            note = f"registry unavailable: {exc}"
        out = revision_modules.describe(lock, registry, today=dt.date.today())
        if registry is None:
            out["notes"].append(note)
        return out

    # -- requests ----------------------------------------------------------------------------------
    def promote(self, system: str, req: control.PromoteRequest, *, actor: control.Actor) -> control.PromoteResult:
        if req.only_full:
            self.command(system, Command.PROMOTE_FULL, actor=actor)
            return control.PromoteResult(system=system, promote_full=True)
        spec = system_spec.from_document(req.system, source="system") if req.system is not None else None
        what = ", ".join(req.modules) or "a new System spec"
        self.approvals.precheck(system, actor=actor, break_glass=req.break_glass)
        with self._claim(system, what):
            prepared, notes = promotion.compose_next(
                self.c.registry,
                self.store,
                system,
                modules=req.modules,
                spec=spec,
                cache=self.c.cfg.module_cache,
                bentos=self.c.parts.bentos,
                force=req.force,
            )
            change = self.approvals.check_promote(system, prepared.lock, actor=actor, break_glass=req.break_glass)
            with self._lock:
                accepted = time.time()
                promotion.set_target(self.store, system, prepared.lock.revision, req.modules)
                if req.full:
                    self.store.command(system, promote_full=time.time() + 0.001)
                self._requested(
                    system, "Promote", f"revision {prepared.record.number} ({what})", actor, prepared.lock.revision,
                    now=accepted,
                )  # fmt: skip
                self.approvals.accepted(system, change, number=prepared.record.number, force=prepared.overrides)
        self.c.wake(system)
        return control.PromoteResult(
            system=system,
            revision=prepared.lock.revision,
            number=prepared.record.number,
            changes=notes,
            overrides=prepared.overrides,
            rollback=prepared.lock.revision == self.store.status(system).previous_stable,
        )

    def command(self, system: str, cmd: Command, *, actor: control.Actor) -> control.CommandResult:
        self.store.rollout(system)
        now = time.time()
        msg = None
        with self._lock:
            match cmd:
                case Command.PAUSE:
                    self.store.command(system, paused=True)
                case Command.RESUME:
                    self.store.command(system, paused=False, resume=now)
                case Command.ABORT:
                    self._ensure_abortable(system)
                    self.store.command(system, abort=now)
                case Command.RETRY:
                    self.store.command(system, retry=now)
                case Command.PROMOTE_FULL:
                    self.approvals.check_full(system, actor=actor, now=now)
                    self.store.command(system, promote_full=now)
                case Command.ROLLBACK:
                    self._ensure_not_preparing(system)
                    msg = promotion.rollback(self.store, system)
            self._requested(system, _WORD[cmd], msg or cmd.value, actor, None, now=now)
        self.c.wake(system)
        if msg is not None:
            return control.CommandResult(system=system, message=msg)
        return control.CommandResult(system=system, command=cmd.value)

    def undo(self, system: str, req: control.UndoRequest, *, actor: control.Actor) -> control.UndoResult:
        with self._lock:
            now = time.time()
            self._ensure_not_preparing(system)
            rec = promotion.undo(self.store, system, to=req.to_revision)
            self._requested(system, "Undo", f"back to revision {rec.number}", actor, rec.revision, now=now)
        self.c.wake(system)
        return control.UndoResult(system=system, revision=rec.revision, number=rec.number)

    def toggle(self, system: str, req: control.ToggleRequest, *, actor: control.Actor) -> control.ToggleResult:
        lock = self.store.lock(system, self.store.status(system).stable or "")
        known = {f.name for f in lock.system.spec.flags}
        if req.flag not in known:
            raise SpecError(f"system {system} has no flag {req.flag!r} (flags: {sorted(known)})", field="flag")
        now = time.time()
        self.store.toggle(system, req.flag, enabled=req.enabled, percent=float(req.percent))
        state = f"on for {req.percent:g} %" if req.enabled else "off"
        self._requested(system, "Toggle", f"flag {req.flag} {state}", actor, None, now=now)
        self.c.manage(system).runtime.refresh_toggles()
        return control.ToggleResult(system=system, flag=req.flag, enabled=req.enabled, percent=req.percent)

    def approve(self, system: str, req: control.ApproveRequest, *, actor: control.Actor) -> control.ApproveResult:
        return self.approvals.decide(system, req, actor=actor)

    # -- the local runtime only --------------------------------------------------------------------
    def deploy(self, req: control.DeployRequest, *, actor: control.Actor) -> control.DeployResult:
        now = time.time()
        system = system_spec.from_document(req.system, source="system")
        name = system.metadata.name
        if name in self.store.systems():
            raise Conflict(f"system {name!r} is already deployed (promote a new revision instead)")
        prepared = promotion.deploy(
            self.c.registry,
            self.store,
            system,
            req.rollout,
            cache=self.c.cfg.module_cache,
            bentos=self.c.parts.bentos,
            port=req.port,
        )
        self._requested(name, "Deploy", f"revision {prepared.record.number}", actor, prepared.lock.revision, now=now)
        self.c.manage(name)
        return control.DeployResult(system=name, revision=prepared.lock.revision, router=f"http://127.0.0.1:{req.port}")

    def delete(self, system: str, *, actor: control.Actor) -> dict[str, Any]:
        self.store.rollout(system)
        self._requested(system, "Delete", "stop every process", actor, None, now=time.time())
        self.c.forget(system, stop=True)
        return {"system": system, "stopped": True}

    # -- accepting atomically ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _claim(self, system: str, what: str) -> Iterator[None]:
        """Hold the system for one promote from its check to its target being set."""
        with self._lock:
            self._ensure_not_preparing(system)
            r, s, _ = self.store.load(system)
            rules.ensure_no_rollout(system, s, r.spec.revision)
            rules.ensure_stable(system, s)
            self._preparing[system] = what
        try:
            yield
        finally:
            with self._lock:
                self._preparing.pop(system, None)

    def _ensure_not_preparing(self, system: str) -> None:
        what = self._preparing.get(system)
        if what is not None:
            raise Conflict(f"{system}: a rollout of {what} is in progress (its revision is being built; wait)")

    def _requested(
        self, system: str, what: str, detail: str, actor: control.Actor, revision: str | None, *, now: float
    ) -> None:
        """Record who asked for what and why, at ``now``: when the request was accepted (taken
        before its effect, so that the transition it causes is never older than the request)."""
        why = f": {actor.reason}" if actor.reason else ""
        self.store.append_request(
            system, f"{what}Requested", f"{actor.user} asked: {detail}{why}", now=now, actor=actor.wire(),
            revision=revision,
        )  # fmt: skip
        self.approvals.requested(system, what, detail, actor, revision, now=now)

    def _ensure_abortable(self, system: str) -> None:
        self._ensure_not_preparing(system)
        r, s, _ = self.store.load(system)
        rules.ensure_abortable(system, s, r.spec.revision)


def _traffic(tele: dict[str, Any] | None) -> dict[str, control.TrafficFigures]:
    out = {}
    for rev, t in ((tele or {}).get("revisions") or {}).items():
        req = t.get("requests", 0)
        mirror, conf = t.get("mirror") or {}, t.get("confidence") or {}
        out[rev] = control.TrafficFigures(
            role=t.get("role"),
            request_rate=round(req / TELEMETRY_WINDOW, 3),
            error_rate=round(t.get("errors", 0) / req, 4) if req else None,
            fallbacks=t.get("fallbacks", 0),
            mirrored=mirror.get("requests", 0),
            labels=dict(t.get("labels") or {}),
            confidence=round(conf["sum"] / conf["count"], 4) if conf.get("count") else None,
            compared=mirror.get("compared", 0),
            disagreed=mirror.get("disagreed", 0),
        )
    return out


def _implements_the_port(c: LocalControl) -> ports.Control:
    return c  # mypy checks LocalControl against the Control protocol here
