"""The Rollout custom resource as the operator keeps it (``Entry``) and its cache.

The spec is parsed with ``spec.rollout.from_document``; the persisted state machine lives in
``.status.machine`` (``RolloutStatus.for_storage``). People's commands are ``spec.paused`` and the
annotations ``modship.dev/{abort,resume,promote-full,retry}`` holding the unix time they were given;
``modship.dev/toggles`` holds the system's feature toggles as JSON.

``RolloutCache`` keeps what the operator needs of each Rollout between cycles (its watch feeds spec
and annotation changes), so an idle cycle reads nothing from the API server. Its status is trusted
only when it came from a read or from this process's own write.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import orjson

from controller.adapters.kube.api import GROUP_VERSION, ROLLOUTS, Json, Kube
from controller.adapters.kube.names import Owner
from controller.errors import SpecError
from controller.plan.observations import Controls
from controller.plan.status import RolloutStatus
from controller.spec import rollout as rollout_spec
from controller.spec.rollout import Rollout

log = logging.getLogger("modship.kubernetes")

FINALIZER = "modship.dev/cleanup"
TOGGLES = "modship.dev/toggles"
AUTHOR = "modship.dev/author"  # who set spec.revision (the chart's admission policy refuses another name)
BREAK_GLASS = "modship.dev/break-glass"  # the reason a change overrides the policy's windows and soak
CONTROLS = {
    "abort": "modship.dev/abort",
    "resume": "modship.dev/resume",
    "promote_full": "modship.dev/promote-full",
    "retry": "modship.dev/retry",
}
FAILED = "Failed"  # a phase of the custom resource only: its spec cannot be run
LAST_EVENTS = 20  # status.lastEvents holds at most this many (the CRD's maxItems)


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
        if not body.get("status"):  # nobody has written its status yet: nothing to read again (our
            new.status = RolloutStatus()  # writes carry its resourceVersion, so a stale one conflicts)
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
