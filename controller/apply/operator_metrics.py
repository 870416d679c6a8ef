"""What the operator's ``/metrics`` shows (and the chart's dashboard reads): each Rollout's weight
and phase, analysis verdicts as ``plan.analysis`` judged them, and rollbacks by reason. The local
controller's ``/metrics`` shows the same.

Counters start at 0 for every reason and every check's verdicts as soon as a rollout is seen:
``increase()`` cannot count a series' first sample, so a rollback whose counter were born at 1
would never show on a dashboard."""

from __future__ import annotations

import contextlib
from typing import Any

from controller.plan import analysis
from controller.plan import rollout as machine
from controller.plan.actions import Event
from controller.plan.observations import Observations
from controller.plan.status import RolloutStatus, Verdict
from controller.spec.rollout import Rollout

Key = tuple[str, str]  # (namespace, name)


class Metrics:
    """``/metrics`` of the operator: each Rollout's weight and phase, analysis verdicts, rollbacks."""

    PHASES = ("Idle", "Progressing", "Paused", "Promoted", "Aborted", "Failed")
    ROLLBACKS = frozenset(
        {
            "AbortedByUser",
            "AnalysisFailed",
            "CanaryFailed",
            "MetricsUnavailable",
            "ProgressDeadlineExceeded",
            "RolledBack",
        }
    )

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        labels = ["namespace", "rollout"]
        self.weight = Gauge("modship_rollout_weight", "Canary weight (%)", labels, registry=self.registry)
        self.phase = Gauge(
            "modship_rollout_phase", "1 for the current phase", [*labels, "phase"], registry=self.registry
        )
        self.verdicts = Counter(
            "modship_rollout_analysis_verdicts",
            "Analysis measurements by check and verdict",
            [*labels, "check", "verdict"],
            registry=self.registry,
        )
        self.rollbacks = Counter(
            "modship_rollout_rollbacks",
            "Canaries stopped or rolled back, by reason",
            [*labels, "reason"],
            registry=self.registry,
        )
        self._series: dict[Key, set[tuple[Any, tuple[str, ...]]]] = {}

    def serve(self, port: int) -> None:
        from prometheus_client import start_http_server

        start_http_server(port, registry=self.registry)

    def _use(self, key: Key, metric: Any, *labels: str) -> Any:
        self._series.setdefault(key, set()).add((metric, (*key, *labels)))
        return metric.labels(*key, *labels)

    def show(self, key: Key, phase: str, weight: float) -> None:
        self._use(key, self.weight).set(weight)
        for p in self.PHASES:
            self._use(key, self.phase, p).set(1.0 if p == phase else 0.0)

    def cycle(
        self, key: Key, r: Rollout, *, s: RolloutStatus, obs: Observations, d: machine.Decision, now: float
    ) -> None:
        """After a cycle: its measurements (as ``plan.analysis`` judged them), the new weight and phase."""
        after = d.status
        in_flight = after.in_flight
        self.start(key, r)
        self.show(key, after.phase.value, after.traffic.weight if in_flight else 0.0)
        windows = machine.windows(r, s, now)
        for check, sample in obs.samples.items():
            m = analysis.measure(r.check(check), sample, now, window_full=windows.get(check, (0.0, True))[1])
            self._use(key, self.verdicts, check, m.verdict.value).inc()
        for a in d.actions:
            if isinstance(a, Event) and a.reason in self.ROLLBACKS:
                self._use(key, self.rollbacks, a.reason).inc()

    def start(self, key: Key, r: Rollout) -> None:
        """Every rollback reason and every check's verdicts at 0 (idempotent)."""
        for reason in self.ROLLBACKS:
            self._use(key, self.rollbacks, reason)
        for check in r.spec.analysis.checks:
            for verdict in Verdict:
                self._use(key, self.verdicts, check.name, verdict.value)

    def forget(self, key: Key) -> None:
        for metric, labels in self._series.pop(key, set()):
            with contextlib.suppress(KeyError):
                metric.remove(*labels)
