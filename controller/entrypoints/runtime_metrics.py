"""``GET /metrics`` of the local controller: the local runtime's processes, memory and crashes.

    modship_runtime_processes{system,unit}              processes of a running unit (supervisor included)
    modship_runtime_rss_bytes{system,unit}              their resident memory
    modship_runtime_crashes_total{system,unit,process}  crashes since deploy, by the process that died

A unit is a revision (its id) or ``router``; ``process`` is server, worker, router, supervisor, …

Then the rollout metrics the operator exports too (``apply.operator_metrics``; the chart's Grafana
dashboard reads them), with an empty ``namespace``: ``modship_rollout_phase``, ``_weight``,
``_analysis_verdicts_total``, ``_rollbacks_total``, labelled ``rollout`` by system name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from controller.apply.local_controller import LocalController

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(c: LocalController) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class Runtime:
        def collect(self) -> Iterator[Any]:
            procs = GaugeMetricFamily("modship_runtime_processes", "processes of a unit", labels=["system", "unit"])
            rss = GaugeMetricFamily("modship_runtime_rss_bytes", "resident memory of a unit", labels=["system", "unit"])
            crashes = CounterMetricFamily(
                "modship_runtime_crashes", "crashes by the process that died", labels=["system", "unit", "process"]
            )
            for name, m in list(c.systems.items()):
                report = m.runtime.report()
                for unit, u in report["units"].items():
                    procs.add_metric([name, unit], u["processes"])
                    rss.add_metric([name, unit], u["rssBytes"])
                for unit, cr in report["crashes"].items():
                    for process, n in cr["byProcess"].items():
                        crashes.add_metric([name, unit, process], n)
            yield from (procs, rss, crashes)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Runtime())
    return bytes(generate_latest(registry)) + bytes(generate_latest(c.metrics.registry))
