"""Traffic splitting without a mesh: replica ratios behind the root Service ``S``, which selects
every revision. Coarse: at least one canary pod runs while a canary is in flight, and the warm
previous revision scales to zero (the root Service would send it traffic). It cannot mirror nor
route by header.
"""

from __future__ import annotations

from collections.abc import Callable

from controller.adapters.kube.traffic import Notes, Split


def replicas(n: int, split: Split, revision: str, role: str) -> int:
    """Replicas of ``revision`` (in ``role``) out of the workload's ``n`` for ``split``."""
    if role == "previous" and revision not in (split.stable, split.canary):
        return 0  # the root Service selects every revision: a warm previous one would get traffic
    if role == "canary" and revision != split.canary:
        return min(n, 1)  # not routed yet: the route that follows in the same cycle sets its share
    if split.canary is None:
        return n
    canary = max(1, round(n * split.weight / 100))
    if revision == split.canary:
        return canary
    return n - canary if n - canary >= 1 else (0 if split.weight >= 100 else 1)


class ReplicaRatios:
    """The TrafficRouter without ``spec.trafficRouting``: ``redeploy`` applies the Deployments of
    the split's revisions with the replicas ``replicas`` gives."""

    label = "replica ratios"

    def __init__(self, redeploy: Callable[[], None]) -> None:
        self.redeploy = redeploy

    def notes(self, split: Split) -> Notes:
        out: Notes = {}
        if split.mirror:
            out["Mirroring"] = (False, "MirrorUnsupported", "replica ratios cannot mirror: setMirror ignored")
        if split.header_route:
            why = "header routes need spec.trafficRouting (gatewayAPI, istio or nginx): setHeaderRoute ignored"
            out["TrafficRouting"] = (False, "UnsupportedWithReplicaRatios", why)
        return out

    def route(self, split: Split) -> None:
        self.redeploy()
