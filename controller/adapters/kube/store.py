"""The RolloutStore port on the Rollout custom resource's status subresource.

Beside the persisted state machine, the status holds a summary people read (phase, step, weight,
revisions, conditions, observedGeneration) and the last transition's Events. The status is written
with the last seen resourceVersion as a precondition, so a status that changed underneath (another
operator, a stale cache) fails with a conflict instead of being overwritten.
"""

from __future__ import annotations

import os
from typing import Any

from controller.adapters.kube.api import ROLLOUTS, Json, Kube
from controller.adapters.kube.events import EventRecorder
from controller.adapters.kube.rollouts import FAILED, FINALIZER, LAST_EVENTS, Entry, RolloutCache, now_iso
from controller.adapters.kube.traffic import Notes
from controller.errors import NotFound, SpecError, Unavailable
from controller.plan.actions import Event
from controller.plan.observations import Controls
from controller.plan.status import Phase, RolloutStatus
from controller.spec.rollout import Rollout


class KubernetesStore:
    """The RolloutStore port for the Rollouts of one namespace (``system`` is the Rollout's name).

    ``notes`` are conditions other parts of the cycle found (the Target's routing, the operator's
    errors); ``save`` writes them with the status, once per cycle.
    """

    def __init__(
        self,
        kube: Kube,
        cache: RolloutCache,
        namespace: str,
        *,
        recorder: EventRecorder,
        notes: Notes | None = None,
        default_prometheus: str | None = None,
    ) -> None:
        self.kube, self.cache, self.namespace, self.recorder = kube, cache, namespace, recorder
        self.notes: Notes = notes if notes is not None else {}
        self.default_prometheus = default_prometheus
        self._staged: list[Json] = []

    def entry(self, name: str) -> Entry:
        e = self.cache.get(self.kube, self.namespace, name)
        if e is None:
            raise NotFound(f"Rollout {self.namespace}/{name} does not exist")
        return e

    # -- RolloutStore port -------------------------------------------------------------------------
    def load(self, system: str) -> tuple[Rollout, RolloutStatus, Controls]:
        e = self.entry(system)
        assert e.status is not None
        return e.rollout(self.default_prometheus), e.status, e.controls

    def save(self, system: str, status: RolloutStatus) -> None:
        e = self.entry(system)
        summary = _summary(status)
        self._write(e, {**summary, "machine": status.for_storage()}, status)

    # -- Events, exactly once ------------------------------------------------------------------------
    def stage(self, name: str, events: list[Event]) -> None:
        """Name this cycle's Events; ``save`` keeps them in ``status.lastEvents``, ``record`` posts
        them. A crash between the two loses nothing: ``replay`` posts them again, and their names
        make a second post a no-op."""
        token = os.urandom(5).hex()
        self._staged = [
            {
                "name": f"{name}.{token}{i:x}",
                "reason": ev.reason,
                "message": ev.message[:1024],
                "type": "Warning" if ev.warning else "Normal",
            }
            for i, ev in enumerate(events)
        ]

    def record(self, name: str, event: Event) -> None:
        """Post one Event (``execute.after_save``'s ``record``), by its staged name when it has one."""
        e = self.entry(name)
        staged = next(
            (x for x in self._staged if x["reason"] == event.reason and x["message"] == event.message[:1024]), None
        )
        if staged is not None:
            self._staged.remove(staged)
            self.recorder.post(e.owner, staged)
        else:
            self.recorder.record(e.owner, event)

    def replay(self, e: Entry) -> None:
        """After reading a Rollout anew (a restart, a new leader): post the last transition's Events
        that may never have been posted."""
        if e.reread:
            for ev in e.last_events:
                self.recorder.post(e.owner, ev)
            e.reread = False

    # -- beyond the port ----------------------------------------------------------------------------
    def sync(self, name: str) -> None:
        """Write the conditions alone when they changed but the state machine's status did not."""
        e = self.entry(name)
        assert e.status is not None
        wanted = conditions(e.conditions, _base(e.status) | self.notes)
        if _strip(wanted) != _strip(e.conditions) or e.observed != e.generation or e.phase == FAILED:
            self.save(name, e.status)

    def fail(self, name: str, error: SpecError) -> None:
        """Mark a Rollout whose spec cannot run: phase Failed and a condition naming the field. The
        state machine's status is kept, so fixing the spec continues where it was."""
        e = self.entry(name)
        message = str(error)[:1000]
        notes = {"Ready": (False, "InvalidSpec", message)}
        if (
            e.phase == FAILED
            and e.observed == e.generation
            and _strip(conditions(e.conditions, notes)) == _strip(e.conditions)
        ):
            return
        doc: Json = {"phase": FAILED, "reason": "InvalidSpec", "message": message, "observedGeneration": e.generation}
        doc["conditions"] = conditions(e.conditions, notes)
        if e.last_events:
            doc["lastEvents"] = e.last_events
        if e.status is not None:
            doc["machine"] = e.status.for_storage()
        self._patch(e, doc, None)

    def add_finalizer(self, e: Entry) -> None:
        """Hold deletion until the operator has cleaned up (``remove_finalizer``)."""
        self._finalizers(e, [*e.finalizers, FINALIZER])

    def remove_finalizer(self, e: Entry) -> None:
        self._finalizers(e, [f for f in e.finalizers if f != FINALIZER])

    def _finalizers(self, e: Entry, finalizers: list[str]) -> None:
        body = {"metadata": {"resourceVersion": e.resource_version, "finalizers": finalizers or None}}
        try:
            answer = self.kube.merge(ROLLOUTS, e.namespace, e.name, body)
        except Unavailable:
            self.cache.distrust(e.namespace, e.name)
            raise
        self.cache.written(e, answer, None)

    def _write(self, e: Entry, summary: Json, status: RolloutStatus) -> None:
        doc = {**summary, "observedGeneration": e.generation}
        doc["conditions"] = conditions(e.conditions, _base(status) | self.notes)
        events = self._staged or e.last_events
        if events:
            doc["lastEvents"] = events[-LAST_EVENTS:]
        self._patch(e, doc, status)

    def _patch(self, e: Entry, doc: Json, status: RolloutStatus | None) -> None:
        ops: list[Json] = [
            {"op": "add", "path": "/metadata/resourceVersion", "value": e.resource_version},
            {"op": "add", "path": "/status", "value": doc},
        ]
        try:
            body = self.kube.patch(ROLLOUTS, e.namespace, e.name, ops, sub="status")
        except Unavailable:
            self.cache.distrust(e.namespace, e.name)  # someone else wrote: read before acting again
            raise
        self.cache.written(e, body, status)


def _summary(s: RolloutStatus) -> Json:
    in_flight = s.canary is not None and s.phase in (Phase.PROGRESSING, Phase.PAUSED)
    doc: Json = {
        "phase": s.phase.value,
        "reason": s.reason,
        "message": s.message,
        "step": s.step,
        "weight": s.traffic.weight if in_flight else 0.0,
    }
    for key, value in (
        ("stableRevision", s.stable),
        ("canaryRevision", s.canary if in_flight or s.phase is Phase.ABORTED else None),
        ("previousRevision", s.previous_stable),
    ):
        if value is not None:
            doc[key] = value
    return doc


def _base(s: RolloutStatus) -> Notes:
    in_flight = s.canary is not None and s.phase in (Phase.PROGRESSING, Phase.PAUSED)
    return {
        "Ready": (True, "Reconciled", "the operator acts on the current spec"),
        "Progressing": (in_flight, s.reason or s.phase.value, s.message or s.phase.value),
    }


def conditions(previous: list[Json], wanted: Notes) -> list[Json]:
    """Conditions as Kubernetes shows them; lastTransitionTime moves only when status flips."""
    before = {c.get("type"): c for c in previous}
    out = []
    for kind, (ok, reason, message) in sorted(wanted.items()):
        status = "True" if ok else "False"
        old = before.get(kind)
        since = old.get("lastTransitionTime") if old is not None and old.get("status") == status else None
        cond = {"type": kind, "status": status, "reason": _reason(reason), "message": message[:1000]}
        cond["lastTransitionTime"] = since or now_iso()
        out.append(cond)
    return out


def _reason(reason: str) -> str:
    """Condition reasons are CamelCase identifiers."""
    clean = "".join(ch for ch in reason.title() if ch.isalnum()) if not reason.isalnum() else reason
    return clean or "Unknown"


def _strip(conds: list[Json]) -> list[tuple[Any, ...]]:
    return sorted((c.get("type"), c.get("status"), c.get("reason"), c.get("message")) for c in conds)
