"""How traffic is split on a cluster: the ``Split`` being enforced, the ``TrafficRouter`` port
(one module per way of splitting: ``gateway``, ``istio``, ``nginx``, ``ratios``, like Flagger's
``pkg/router``) and the ``Context`` routers write through.

What a router cannot do (mirroring with NGINX or replica ratios, a mirror percentage the HTTPRoute
CRD lacks) becomes a status condition, never a silent no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from controller.adapters.kube.api import KINDS, Json, Kube, Resource
from controller.adapters.kube.caches import Applied, Shared
from controller.adapters.kube.names import Owner
from controller.errors import Unavailable
from controller.plan.status import RolloutStatus

Note = tuple[bool, str, str]  # (ok, reason, message) of a status condition
Notes = dict[str, Note]  # condition type -> note


@dataclass
class Split:
    """The traffic split being enforced: from the persisted status, then from ``route``."""

    stable: str | None
    canary: str | None
    weight: float = 0.0
    header_route: tuple[str, str | None] | None = None
    mirror: float = 0.0
    fallback: bool = False  # what only the ``modship`` router applies
    sticky_header: str | None = None
    sticky_cookie: str | None = None

    @classmethod
    def of(cls, s: RolloutStatus) -> Split:
        in_flight = s.in_flight
        if not in_flight:
            return cls(s.stable, None)
        return cls(s.stable, s.canary, s.traffic.weight, s.traffic.header_route, s.traffic.mirror)


class TrafficRouter(Protocol):
    """One way of splitting a system's traffic between its stable and canary Services."""

    label: str  # what routes, for conditions: "HTTPRoute web", "replica ratios"

    def notes(self, split: Split) -> Notes:
        """Conditions about what of an in-flight ``split`` this router applies or cannot apply."""
        ...

    def route(self, split: Split) -> None:
        """Enforce ``split``; idempotent (an unchanged split costs no API call)."""
        ...


@dataclass
class Context:
    """What routers and the Target write through: one Rollout's objects, the process's caches."""

    shared: Shared
    owner: Owner
    system: str
    port: int

    @property
    def kube(self) -> Kube:
        return self.shared.kube

    @property
    def ns(self) -> str:
        return self.owner.namespace

    def key(self, res: Resource, name: str) -> str:
        """What ``Applied`` remembers, per Rollout object (its uid: a recreated Rollout starts over)."""
        return f"{self.owner.uid}/{res[1]}/{name}"

    def apply(self, res: Resource, body: Json) -> None:
        """Server-side apply, unless this process applied the same content recently."""
        key = self.key(res, body["metadata"]["name"])
        digest = Applied.digest(body)
        if self.shared.applied.fresh(key, digest):
            return
        self.kube.apply(res, self.ns, body)
        self.shared.applied.remember(key, digest)

    def user_object(self, res: Resource, name: str, wanted: Any) -> Json | None:
        """A router object the user owns, to rewrite; None when ``wanted`` is already written there."""
        if self.shared.applied.fresh(self.key(res, name), Applied.digest(wanted)):
            return None
        obj = self.kube.get(res, self.ns, name)
        if obj is None:
            raise Unavailable(f"{KINDS[res]} {self.ns}/{name} named in spec.trafficRouting does not exist", delay=10)
        return obj

    def rewrite(self, res: Resource, name: str, spec: Json, split: Split) -> None:
        """Apply our part of a user's router object's spec; remember ``split`` as written."""
        gv, _ = res
        body = {"apiVersion": gv, "kind": KINDS[res], "metadata": {"name": name, "namespace": self.ns}, "spec": spec}
        self.kube.apply(res, self.ns, body)
        self.shared.applied.remember(self.key(res, name), Applied.digest(split))


def weights(w: float) -> tuple[int, int]:
    """Integer weights (Gateway API, Istio): percentages, or hundredths of one when fractional."""
    if float(w).is_integer():
        return 100 - int(w), int(w)
    return round((100 - w) * 100), round(w * 100)


def mirroring(split: Split) -> Notes:
    return {"Mirroring": (True, "Mirroring", f"{split.mirror:g} % of stable's traffic mirrored to the canary")}


def conditions(router: TrafficRouter, split: Split) -> Notes:
    """What ``split`` looks like through ``router``, as conditions: the same inputs give the same
    conditions, so the status does not flap."""
    where = f"{split.weight:g} % to canary {split.canary}" if split.canary else f"100 % to stable {split.stable}"
    notes: Notes = {"TrafficRouting": (True, "Routed", f"{router.label}: {where}")}
    if split.canary:
        notes.update(router.notes(split))
    return notes
