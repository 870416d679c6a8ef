"""The RolloutStore port on the Rollout custom resource (``modship.dev/v1alpha1``).

The spec is parsed with ``spec.rollout.from_document``; the persisted state machine lives in
``.status.machine`` (``RolloutStatus.for_storage``) beside a summary people read (phase, step,
weight, revisions, conditions, observedGeneration). People's commands are ``spec.paused`` and the
annotations ``modship.dev/{abort,resume,promote-full,retry}`` holding the unix time they were given;
``modship.dev/toggles`` holds the system's feature toggles as JSON.

``RolloutCache`` keeps what the operator needs of each Rollout between cycles (its watch feeds spec
and annotation changes), so an idle cycle reads nothing from the API server. Its status is trusted
only when it came from a read or from this process's own write: the status subresource is written
with the last seen resourceVersion as a precondition, so a status that changed underneath (another
operator, a stale cache) fails with a conflict instead of being overwritten.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import orjson

from controller.adapters.kubernetes import EVENTS, GROUP_VERSION, ROLLOUTS, Json, Kube, KubeUnavailable, Owner
from controller.errors import NotFound, SpecError, Unavailable
from controller.plan.actions import Event
from controller.plan.observations import Controls
from controller.plan.status import Phase, RolloutStatus
from controller.spec import rollout as rollout_spec
from controller.spec.rollout import Rollout

log = logging.getLogger("modship.kubernetes")

FINALIZER = "modship.dev/cleanup"
TOGGLES = "modship.dev/toggles"
CONTROLS = {
    "abort": "modship.dev/abort",
    "resume": "modship.dev/resume",
    "promote_full": "modship.dev/promote-full",
    "retry": "modship.dev/retry",
}
FAILED = "Failed"  # a phase of the custom resource only: its spec cannot be run
LAST_EVENTS = 20  # status.lastEvents holds at most this many (the CRD's maxItems)
Notes = dict[str, tuple[bool, str, str]]  # condition type -> (ok, reason, message)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the cache ------------------------------------------------------------------------------------------


@dataclass
class Entry:
    """One Rollout as the operator keeps it: the raw spec, parsed lazily, and a trusted status."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    generation: int
    spec: Json
    annotations: dict[str, str]
    deleting: bool
    finalizers: tuple[str, ...]
    status: RolloutStatus | None = None  # None: not trusted, read it again
    phase: str = ""
    conditions: list[Json] = field(default_factory=list)
    observed: int = 0  # status.observedGeneration
    last_events: list[Json] = field(default_factory=list)  # status.lastEvents
    reread: bool = False  # read from the API server since this process last acted on it
    _parsed: tuple[Any, Rollout | SpecError] | None = None

    @property
    def finalized(self) -> bool:
        return FINALIZER in self.finalizers

    @property
    def owner(self) -> Owner:
        return Owner(self.name, self.namespace, self.uid)

    @property
    def controls(self) -> Controls:
        return controls_of(self.spec, self.annotations)

    @property
    def toggles(self) -> dict[str, dict[str, Any]]:
        try:
            data = orjson.loads(self.annotations.get(TOGGLES) or "{}")
        except orjson.JSONDecodeError:
            return {}
        return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}

    def rollout(self, default_prometheus: str | None = None) -> Rollout:
        """The parsed spec (cached per generation). Raises SpecError."""
        key = (self.generation, default_prometheus)
        if self._parsed is None or self._parsed[0] != key:
            self._parsed = (key, _parse(self, default_prometheus))
        parsed = self._parsed[1]
        if isinstance(parsed, SpecError):
            raise parsed
        return parsed


def wire_spec(spec: Json) -> Json:
    """The spec as ``spec.rollout`` parses it. The CRD spells ``trafficRouting.gatewayAPI`` while the
    model's camelCase alias is ``gatewayApi``: pass the field by its Python name, which both accept."""
    routing = spec.get("trafficRouting")
    if isinstance(routing, dict) and "gatewayAPI" in routing:
        routing = {("gateway_api" if k == "gatewayAPI" else k): v for k, v in routing.items()}
        return {**spec, "trafficRouting": routing}
    return spec


def _parse(e: Entry, default_prometheus: str | None) -> Rollout | SpecError:
    spec = wire_spec(e.spec)
    if default_prometheus and not spec.get("prometheus"):
        spec["prometheus"] = default_prometheus
    doc = {
        "apiVersion": GROUP_VERSION,
        "kind": "Rollout",
        "metadata": {"name": e.name, "namespace": e.namespace},
        "spec": spec,
    }
    try:
        return rollout_spec.from_document(doc, source=f"Rollout {e.namespace}/{e.name}")
    except SpecError as exc:
        return exc


def controls_of(spec: Json, annotations: dict[str, str]) -> Controls:
    times: dict[str, float | None] = {}
    for key, annotation in CONTROLS.items():
        raw = annotations.get(annotation)
        try:
            times[key] = float(raw) if raw else None
        except ValueError:
            log.warning("ignoring annotation %s=%r: not a unix time", annotation, raw)
            times[key] = None
    return Controls(paused=bool(spec.get("paused", False)), **times)


def entry_of(body: Json, *, trusted: bool) -> Entry:
    """An Entry from a Rollout as the API returns it (``trusted``: take its status too)."""
    meta, st = body.get("metadata") or {}, body.get("status") or {}
    status = None
    if trusted:
        status = _machine(st.get("machine"), f"{meta.get('namespace')}/{meta.get('name')}")
    return Entry(
        namespace=meta["namespace"],
        name=meta["name"],
        uid=meta["uid"],
        resource_version=meta["resourceVersion"],
        generation=int(meta.get("generation") or 0),
        spec=body.get("spec") or {},
        annotations={k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith("modship.dev/")},
        deleting=bool(meta.get("deletionTimestamp")),
        finalizers=tuple(meta.get("finalizers") or ()),
        status=status,
        phase=str(st.get("phase") or ""),
        conditions=list(st.get("conditions") or []),
        observed=int(st.get("observedGeneration") or 0),
        last_events=list(st.get("lastEvents") or []),
        reread=trusted,
    )


def _machine(raw: Any, where: str) -> RolloutStatus:
    if not raw:
        return RolloutStatus()
    try:
        return RolloutStatus.from_storage(raw)
    except (KeyError, TypeError, ValueError) as exc:
        log.error("%s: unreadable status.machine (%r): starting from an empty status", where, exc)
        return RolloutStatus()


class RolloutCache:
    """Rollouts by (namespace, name). Thread-safe: the watch writes from the event loop, reconciles
    read and write from worker threads."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], Entry] = {}
        self._lock = threading.Lock()

    def observe(self, body: Json) -> bool:
        """Take in a watched version of a Rollout; True when it asks for a reconcile (new object,
        new generation, new commands or toggles, deletion). Its status is not taken: only reads
        and our own writes are trusted for that."""
        new = entry_of(body, trusted=False)
        key = (new.namespace, new.name)
        with self._lock:
            old = self._entries.get(key)
            if old is None or old.uid != new.uid:
                self._entries[key] = new
                return True
            wake = (
                new.generation != old.generation
                or new.annotations != old.annotations
                or new.deleting != old.deleting
                or new.finalizers != old.finalizers
            )
            old.resource_version, old.generation, old.spec = new.resource_version, new.generation, new.spec
            old.annotations, old.deleting, old.finalizers = new.annotations, new.deleting, new.finalizers
            return wake

    def gone(self, namespace: str, name: str) -> None:
        with self._lock:
            self._entries.pop((namespace, name), None)

    def get(self, kube: Kube, namespace: str, name: str) -> Entry | None:
        """The entry with a trusted status (read from the API server when needed); None: deleted."""
        with self._lock:
            e = self._entries.get((namespace, name))
        if e is not None and e.status is not None:
            return e
        body = kube.get(ROLLOUTS, namespace, name)
        if body is None:
            self.gone(namespace, name)
            return None
        fresh = entry_of(body, trusted=True)
        with self._lock:
            self._entries[(namespace, name)] = fresh
        return fresh

    def distrust(self, namespace: str | None = None, name: str | None = None) -> None:
        """Read the status again before the next cycle (after a conflict; on becoming leader)."""
        with self._lock:
            for (ns, n), e in self._entries.items():
                if (namespace is None or ns == namespace) and (name is None or n == name):
                    e.status = None

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def written(self, e: Entry, body: Json, status: RolloutStatus | None) -> None:
        """Record our own write (its answer is the object as stored)."""
        st, meta = body.get("status") or {}, body.get("metadata") or {}
        with self._lock:
            e.resource_version = meta.get("resourceVersion", e.resource_version)
            if status is not None:
                e.status = status
            e.phase = str(st.get("phase") or "")
            e.conditions = list(st.get("conditions") or [])
            e.observed = int(st.get("observedGeneration") or 0)
            e.last_events = list(st.get("lastEvents") or [])
            e.finalizers = tuple(meta.get("finalizers") or ())


# -- the store --------------------------------------------------------------------------------------------


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
    in_flight = s.in_flight
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
    in_flight = s.in_flight
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


# -- Kubernetes Events -----------------------------------------------------------------------------------


class EventRecorder:
    """core/v1 Events about a Rollout, one per decision Event; best effort (never raises)."""

    def __init__(self, kube: Kube, *, instance: str, component: str = "modship-operator") -> None:
        self.kube, self.instance, self.component = kube, instance, component

    def record(self, owner: Owner, event: Event) -> None:
        """Post an Event under a generated name."""
        kind = "Warning" if event.warning else "Normal"
        self.post(owner, {"reason": event.reason, "message": event.message[:1024], "type": kind})

    def post(self, owner: Owner, event: Json) -> None:
        """Post ``{name?, reason, message, type}``; an Event of that name posted before is left as it is."""
        stamp = dt.datetime.now(dt.UTC)
        meta = {"name": event["name"]} if event.get("name") else {"generateName": f"{owner.name}."}
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {**meta, "namespace": owner.namespace},
            "involvedObject": {
                "apiVersion": "modship.dev/v1alpha1",
                "kind": "Rollout",
                "name": owner.name,
                "namespace": owner.namespace,
                "uid": owner.uid,
            },
            "reason": event["reason"],
            "message": event.get("message", ""),
            "type": event.get("type", "Normal"),
            "source": {"component": self.component},
            "reportingComponent": f"modship.dev/{self.component}",
            "reportingInstance": self.instance,
            "action": event["reason"],
            "eventTime": stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "firstTimestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
        }
        try:
            self.kube.create(EVENTS, owner.namespace, body)
        except KubeUnavailable as exc:
            if exc.reason != "AlreadyExists":
                log.warning("%s/%s: could not post event %s: %s", owner.namespace, owner.name, event["reason"], exc)
        except Exception as exc:  # events are for people; never block a rollout on them
            log.warning("%s/%s: could not post event %s: %s", owner.namespace, owner.name, event["reason"], exc)
