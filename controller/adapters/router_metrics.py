"""The router's Prometheus counters, kept in plain dicts and written out by hand (no locks:
one event loop updates them)."""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any

from controller.plan import telemetry

if TYPE_CHECKING:
    from controller.adapters.router import Route

PROM_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Counters:
    """Cumulative counters for ``GET /metrics`` (routed traffic; mirrored copies are counted apart)."""

    def __init__(self, system: str) -> None:
        self.system = system
        self.requests: dict[tuple[str, str, str], int] = {}
        self.latency: dict[tuple[str, str], list[int]] = {}
        self.latency_sum: dict[tuple[str, str], float] = {}
        self.fallbacks: dict[str, int] = {}
        self.mirrored: dict[str, int] = {}
        self.disagreements: dict[str, int] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}

    @staticmethod
    def inc(table: dict[Any, int], key: Any) -> None:
        table[key] = table.get(key, 0) + 1

    def observe(self, revision: str, role: str, seconds: float) -> None:
        key = (revision, role)
        counts = self.latency.get(key)
        if counts is None:
            counts = self.latency[key] = [0] * len(telemetry.LATENCY_EDGES)
        counts[bisect.bisect_right(telemetry.LATENCY_EDGES, seconds) - 1] += 1
        self.latency_sum[key] = self.latency_sum.get(key, 0.0) + seconds

    def render(self, route: Route) -> bytes:
        s = f'system="{_esc(self.system)}"'
        out: list[str] = []

        def family(name: str, kind: str, doc: str) -> None:
            out.extend((f"# HELP {name} {doc}", f"# TYPE {name} {kind}"))

        def labels(**kv: str) -> str:
            return "{" + ",".join([s, *(f'{k}="{_esc(v)}"' for k, v in kv.items())]) + "}"

        family("modship_router_requests_total", "counter", "Requests answered per revision (or failed: 502/504).")
        out += [
            f"modship_router_requests_total{labels(revision=r, role=ro, code=c)} {n}"
            for (r, ro, c), n in sorted(self.requests.items())
        ]
        family("modship_router_request_duration_seconds", "histogram", "Upstream request latency.")
        hist = "modship_router_request_duration_seconds"
        cut = [telemetry.LATENCY_EDGES.index(le) for le in PROM_BUCKETS]
        for (r, ro), counts in sorted(self.latency.items()):
            out += [
                f"{hist}_bucket{labels(revision=r, role=ro, le=repr(le))} {sum(counts[:i])}"
                for le, i in zip(PROM_BUCKETS, cut, strict=True)
            ]
            out += [
                f"{hist}_bucket{labels(revision=r, role=ro, le='+Inf')} {sum(counts)}",
                f"{hist}_count{labels(revision=r, role=ro)} {sum(counts)}",
                f"{hist}_sum{labels(revision=r, role=ro)} {self.latency_sum[(r, ro)]!r}",
            ]
        for name, table, doc in (
            ("fallbacks", self.fallbacks, "Canary failures retried on stable."),
            ("mirrored", self.mirrored, "Requests mirrored to the canary."),
            ("disagreements", self.disagreements, "Mirrored requests whose label differed from stable's."),
        ):
            family(f"modship_router_{name}_total", "counter", doc)
            out += [f"modship_router_{name}_total{labels(revision=r)} {n}" for r, n in sorted(table.items())]
        family("modship_router_upstream_errors_total", "counter", "Failed upstream attempts by kind.")
        out += [
            f"modship_router_upstream_errors_total{labels(revision=r, kind=k)} {n}"
            for (r, k), n in sorted(self.upstream_errors.items())
        ]
        family("modship_router_weight", "gauge", "Percent of requests routed to each revision.")
        if route.stable is not None:
            out.append(
                f"modship_router_weight{labels(revision=route.stable_rev, role='stable')} "
                f"{100.0 - route.weight if route.canary else 100.0!r}"
            )
        if route.canary is not None:
            out.append(f"modship_router_weight{labels(revision=route.canary_rev, role='canary')} {route.weight!r}")
        family("modship_router_config_generation", "gauge", "Generation of the applied configuration.")
        out.append(f"modship_router_config_generation{{{s}}} {route.generation}")
        return ("\n".join(out) + "\n").encode()
