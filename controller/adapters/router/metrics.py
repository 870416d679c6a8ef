"""Cumulative Prometheus metrics of the router (``GET /metrics``), exposed through prometheus_client.

The hot path only bumps plain dict counters (no locks: one event loop); ``collect`` turns them into
metric families when scraped, so a request costs a few dict updates, not a prometheus_client
``labels().inc()`` each. Routed traffic and mirrored copies are counted apart.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import exposition
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from controller.plan import telemetry

PROM_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_CUT = tuple(telemetry.LATENCY_EDGES.index(le) for le in PROM_BUCKETS)


@dataclass(frozen=True, slots=True)
class Weights:
    """The applied split, for the weight and generation gauges."""

    stable: str | None
    canary: str | None
    weight: float
    generation: int


class Counters:
    """The router's counters; ``render`` is the exposition of ``GET /metrics``."""

    def __init__(self, system: str, weights: Callable[[], Weights]) -> None:
        self.system = system
        self.weights = weights
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
            self.latency_sum[key] = 0.0
        counts[bisect.bisect_right(telemetry.LATENCY_EDGES, seconds) - 1] += 1
        self.latency_sum[key] += seconds

    def render(self) -> bytes:
        return exposition.generate_latest(self)

    def collect(self) -> Iterator[Metric]:
        s = self.system
        requests = CounterMetricFamily(
            "modship_router_requests",
            "Requests answered per revision (or failed: 502/504).",
            labels=["system", "revision", "role", "code"],
        )
        for (r, ro, c), n in sorted(self.requests.items()):
            requests.add_metric([s, r, ro, c], n)
        yield requests
        hist = HistogramMetricFamily(
            "modship_router_request_duration_seconds",
            "Upstream request latency.",
            labels=["system", "revision", "role"],
        )
        for (r, ro), counts in sorted(self.latency.items()):
            buckets: list[tuple[str, float]] = [
                (repr(le), sum(counts[:i])) for le, i in zip(PROM_BUCKETS, _CUT, strict=True)
            ]
            buckets.append(("+Inf", sum(counts)))
            hist.add_metric([s, r, ro], buckets, self.latency_sum[(r, ro)])
        yield hist
        for name, table, doc in (
            ("fallbacks", self.fallbacks, "Canary failures retried on stable."),
            ("mirrored", self.mirrored, "Requests mirrored to the canary."),
            ("disagreements", self.disagreements, "Mirrored requests whose label differed from stable's."),
        ):
            family = CounterMetricFamily(f"modship_router_{name}", doc, labels=["system", "revision"])
            for r, n in sorted(table.items()):
                family.add_metric([s, r], n)
            yield family
        errors = CounterMetricFamily(
            "modship_router_upstream_errors", "Failed upstream attempts by kind.", labels=["system", "revision", "kind"]
        )
        for (r, k), n in sorted(self.upstream_errors.items()):
            errors.add_metric([s, r, k], n)
        yield errors
        w = self.weights()
        weight = GaugeMetricFamily(
            "modship_router_weight",
            "Percent of requests routed to each revision.",
            labels=["system", "revision", "role"],
        )
        if w.stable is not None:
            weight.add_metric([s, w.stable, "stable"], 100.0 - w.weight if w.canary else 100.0)
        if w.canary is not None:
            weight.add_metric([s, w.canary, "canary"], w.weight)
        yield weight
        generation = GaugeMetricFamily(
            "modship_router_config_generation", "Generation of the applied configuration.", labels=["system"]
        )
        generation.add_metric([s], w.generation)
        yield generation
