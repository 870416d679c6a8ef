"""What one operator process remembers across cycles: what it applied (``Applied``), the health of
modship's Deployments as a watch reports it (``DeploymentIndex``), and ``Shared``, the bundle every
Rollout's Target uses.

``Applied`` remembers content hashes, so an unchanged cycle costs no API call; entries expire so
hand edits are undone within ``Applied.ttl``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from controller.adapters.kube.api import Json, Kube


class Applied:
    """Content hashes of what this process applied, per object; unchanged content is not re-sent
    until ``ttl`` passes (then it is, so drift is repaired). Thread-safe."""

    def __init__(self, ttl: float = 300.0) -> None:
        self.ttl = ttl
        self._seen: dict[str, tuple[str, float]] = {}
        self._writes = 0
        self._lock = threading.Lock()

    @staticmethod
    def digest(body: Any) -> str:
        return hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS), digest_size=12).hexdigest()

    def fresh(self, key: str, digest: str) -> bool:
        with self._lock:
            seen = self._seen.get(key)
        return seen is not None and seen[0] == digest and time.monotonic() - seen[1] < self.ttl

    def remember(self, key: str, digest: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._seen[key] = (digest, now)
            self._writes += 1
            if self._writes % 4096 == 0:  # drop what expired (deleted Rollouts' objects)
                self._seen = {k: v for k, v in self._seen.items() if now - v[1] < self.ttl}

    def forget(self, prefix: str) -> None:
        with self._lock:
            for k in [k for k in self._seen if k.startswith(prefix)]:
                del self._seen[k]


@dataclass(frozen=True, slots=True)
class DeploymentState:
    """What health needs from a Deployment, kept small: thousands are held in memory."""

    desired: int
    ready: bool
    failure: str | None = None
    created: str = ""


def deployment_state(d: Json) -> DeploymentState:
    spec, st, meta = d.get("spec") or {}, d.get("status") or {}, d.get("metadata") or {}
    desired = int(spec.get("replicas", 1))
    current = int(st.get("observedGeneration", 0)) >= int(meta.get("generation", 0))
    ok = (
        current
        and int(st.get("updatedReplicas", 0)) >= desired
        and int(st.get("availableReplicas", 0)) >= desired
        and int(st.get("replicas", 0)) <= desired
    )
    failure = None
    for c in st.get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("status") == "False" and c.get("reason"):
            failure = f"{c['reason']}: {c.get('message', '')}".strip()
        elif c.get("type") == "ReplicaFailure" and c.get("status") == "True":
            failure = f"ReplicaFailure: {c.get('reason', '')} {c.get('message', '')}".strip()
    return DeploymentState(desired, ok, failure, str(meta.get("creationTimestamp", "")))


class DeploymentIndex:
    """Health of modship's Deployments, kept current by a watch (the operator feeds ``put`` and
    ``drop``); ``get`` None means unknown, and the Target reads the Deployment itself."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], DeploymentState] = {}
        self._lock = threading.Lock()

    def put(self, namespace: str, name: str, state: DeploymentState) -> bool:
        """Record; True when readiness or failure changed (worth waking the rollout)."""
        with self._lock:
            old = self._states.get((namespace, name))
            self._states[(namespace, name)] = state
        return old is None or (old.ready, old.failure, old.desired) != (state.ready, state.failure, state.desired)

    def seed(self, namespace: str, name: str, state: DeploymentState) -> None:
        """What an apply answered, when the watch has not shown the Deployment yet (a newer
        watched state is never overwritten; the watch's next event replaces this one)."""
        with self._lock:
            self._states.setdefault((namespace, name), state)

    def drop(self, namespace: str, name: str) -> None:
        with self._lock:
            self._states.pop((namespace, name), None)

    def get(self, namespace: str, name: str) -> DeploymentState | None:
        with self._lock:
            return self._states.get((namespace, name))

    def __len__(self) -> int:
        return len(self._states)


@dataclass
class Shared:
    """What every rollout's Target shares in one process."""

    kube: Kube
    applied: Applied = field(default_factory=Applied)
    index: DeploymentIndex = field(default_factory=DeploymentIndex)
    pod_checks: dict[str, tuple[float, str | None]] = field(default_factory=dict)
    reads: dict[str, float] = field(default_factory=dict)  # Deployments read past the index, when
    mirror_percent: bool | None = None  # does the installed HTTPRoute CRD have requestMirror.percent?
