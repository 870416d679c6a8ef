"""What each traffic provider can do, and which parts of a Rollout it therefore cannot serve.

One table (``CAPABILITIES``) says what a router offers; ``NEEDS`` says what each built-in metric,
step and policy needs. ``gaps`` joins them for one Rollout, so ``modship render``, ``modship system
validate --rollout`` and the operator's ``Capabilities`` condition say the same thing, in the same
words, before anything runs. Pure: no I/O.

Only modship's router sees each answer: it compares the canary's answer with stable's on mirrored
traffic (disagreement), keeps per-revision telemetry (the ``builtin`` provider), falls back to
stable on a failed answer and pins users by header or cookie. A mesh that mirrors (Istio, Gateway
API) drops the mirrored answers, so disagreement cannot be measured there by anything; traffic
metrics (error rate, latency, request rate) can still be, with provider ``prometheus`` and a query
on the mesh's own metrics.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from controller.spec.rollout import BuiltinMetric, Provider, Rollout, RolloutBody


class Router(enum.StrEnum):
    MODSHIP = "modship"  # modship's router: the local runtime, or spec.trafficRouting.modship in a cluster
    REPLICAS = "replicas"  # Kubernetes without spec.trafficRouting: replica ratios behind one Service
    GATEWAY_API = "gatewayAPI"
    ISTIO = "istio"
    NGINX = "nginx"


class Capability(enum.StrEnum):
    WEIGHTS = "weights"  # a percentage of requests to the canary
    HEADER_ROUTES = "headerRoutes"  # requests carrying a header go to the canary
    MIRROR = "mirror"  # a copy of stable's requests goes to the canary
    ANSWER_COMPARISON = "answerComparison"  # the mirrored answer is compared with stable's
    TELEMETRY = "telemetry"  # per-revision answers, latencies and errors for the builtin provider
    FALLBACK = "fallback"  # a failed canary answer is retried on stable (zero-loss)
    STICKY = "sticky"  # one user stays on one revision (policies.stickyHeader / stickyCookie)


C = Capability
CAPABILITIES: dict[Router, frozenset[Capability]] = {
    Router.MODSHIP: frozenset(Capability),
    Router.REPLICAS: frozenset({C.WEIGHTS}),
    Router.GATEWAY_API: frozenset({C.WEIGHTS, C.HEADER_ROUTES, C.MIRROR}),
    Router.ISTIO: frozenset({C.WEIGHTS, C.HEADER_ROUTES, C.MIRROR}),
    Router.NGINX: frozenset({C.WEIGHTS, C.HEADER_ROUTES}),
}
LABELS: dict[Router, str] = {
    Router.MODSHIP: "the modship router",
    Router.REPLICAS: "replica ratios",
    Router.GATEWAY_API: "Gateway API",
    Router.ISTIO: "Istio",
    Router.NGINX: "NGINX Ingress",
}

M = BuiltinMetric
_TRAFFIC = frozenset({M.ERROR_RATE, M.LATENCY_P50, M.LATENCY_P99, M.REQUEST_RATE})  # meshes export these
NEEDS: dict[BuiltinMetric, tuple[Capability, ...]] = {
    **{m: (C.TELEMETRY,) for m in BuiltinMetric},
    M.DISAGREEMENT: (C.MIRROR, C.ANSWER_COMPARISON, C.TELEMETRY),
    M.FALLBACK_RATE: (C.FALLBACK, C.TELEMETRY),
}


@dataclass(frozen=True, slots=True)
class Gap:
    """One part of a Rollout its router cannot serve."""

    field: str  # where it is written: spec.analysis.checks[1], spec.strategy.canary.steps[3].setMirror
    needs: Capability
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "needs": self.needs.value, "message": self.message}


def router_of(spec: RolloutBody) -> Router:
    """The router a Rollout spec chooses: its trafficRouting (``modship``: modship's router in the
    cluster); replica ratios on Kubernetes without one (a workload is given); the modship router
    otherwise (the local runtime)."""
    t = spec.traffic_routing
    if t is not None and t.modship is not None:
        return Router.MODSHIP
    if t is not None and t.gateway_api is not None:
        return Router.GATEWAY_API
    if t is not None and t.istio is not None:
        return Router.ISTIO
    if t is not None and t.nginx is not None:
        return Router.NGINX
    return Router.REPLICAS if spec.workload is not None else Router.MODSHIP


def _check_gap(router: Router, metric: BuiltinMetric, missing: Capability) -> str:
    label = LABELS[router]
    if missing is C.MIRROR:
        return f"{label} cannot mirror, so disagreement on mirrored traffic cannot be measured"
    if missing is C.ANSWER_COMPARISON:
        return (
            f"{label} mirrors requests but drops the mirrored answers, so disagreement on mirrored traffic "
            "cannot be measured"
        )
    if missing is C.FALLBACK:
        return f"only the modship router falls back to stable, so {label} has no fallback rate"
    why = f"builtin {metric.value} comes from the modship router's per-revision telemetry, which {label} does not keep"
    if metric in _TRAFFIC:
        return f"{why}; measure it with provider prometheus and a query on {label}'s metrics"
    return f"{why}; no {label} metric carries the answers or inputs it needs"


def gaps(r: Rollout | RolloutBody, router: Router | None = None) -> list[Gap]:
    """Every check, step and policy of ``r`` that ``router`` (default: the one ``r`` chooses)
    cannot serve, in spec order. Checks with provider prometheus are the query's business: none."""
    spec = r.spec if isinstance(r, Rollout) else r
    router = router or router_of(spec)
    has = CAPABILITIES[router]
    label = LABELS[router]
    out: list[Gap] = []
    for i, c in enumerate(spec.analysis.checks):
        if c.provider is not Provider.BUILTIN or c.metric is None:
            continue
        missing = next((n for n in NEEDS[c.metric] if n not in has), None)
        if missing is not None:
            msg = f"check {c.name} ({c.metric.value}): {_check_gap(router, c.metric, missing)}"
            out.append(Gap(f"spec.analysis.checks[{i}]", missing, msg))
    for i, s in enumerate(spec.strategy.canary.steps):
        if s.set_mirror is not None and s.set_mirror.percent > 0 and C.MIRROR not in has:
            msg = f"step {i} setMirror: {label} cannot mirror; the step is skipped"
            out.append(Gap(f"spec.strategy.canary.steps[{i}].setMirror", C.MIRROR, msg))
        if s.set_header_route is not None and C.HEADER_ROUTES not in has:
            msg = f"step {i} setHeaderRoute: {label} cannot route by header; needs spec.trafficRouting"
            out.append(Gap(f"spec.strategy.canary.steps[{i}].setHeaderRoute", C.HEADER_ROUTES, msg))
    if C.STICKY not in has:
        for key, value in (
            ("stickyHeader", spec.policies.sticky_header),
            ("stickyCookie", spec.policies.sticky_cookie),
        ):
            if value:
                msg = f"policies.{key}: only the modship router keeps a user on one revision; {label} ignores it"
                out.append(Gap(f"spec.policies.{key}", C.STICKY, msg))
    return out


def summary(found: list[Gap], router: Router) -> str:
    """One line for a status condition: what ``router`` cannot serve."""
    return f"{LABELS[router]} cannot serve: " + "; ".join(g.message for g in found)
