"""The router's /metrics exposition: written by prometheus_client from the router's own counters."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from controller.adapters.router import metrics


def test_counters_render_as_prometheus_families() -> None:
    c = metrics.Counters("demo", lambda: metrics.Weights(stable="r1", canary="r2", weight=20.0, generation=7))
    c.inc(c.requests, ("r1", "stable", "200"))
    c.inc(c.requests, ("r1", "stable", "200"))
    c.inc(c.upstream_errors, ("r2", "timeout"))
    c.inc(c.fallbacks, "r2")
    c.observe("r1", "stable", 0.003)
    c.observe("r1", "stable", 0.45)
    fams = {f.name: f for f in text_string_to_metric_families(c.render().decode())}

    def value(fam: str, sample: str, **labels: str) -> float:
        return next(
            s.value for s in fams[fam].samples if s.name == sample and all(s.labels[k] == v for k, v in labels.items())
        )

    assert value("modship_router_requests", "modship_router_requests_total", revision="r1", code="200") == 2
    assert fams["modship_router_requests"].type == "counter"
    hist = "modship_router_request_duration_seconds"
    assert fams[hist].type == "histogram"
    assert value(hist, f"{hist}_bucket", revision="r1", le="0.005") == 1
    assert value(hist, f"{hist}_bucket", revision="r1", le="0.5") == 2
    assert value(hist, f"{hist}_bucket", revision="r1", le="+Inf") == 2
    assert abs(value(hist, f"{hist}_sum", revision="r1") - 0.453) < 1e-9
    assert value("modship_router_upstream_errors", "modship_router_upstream_errors_total", kind="timeout") == 1
    assert value("modship_router_fallbacks", "modship_router_fallbacks_total", revision="r2") == 1
    assert value("modship_router_weight", "modship_router_weight", role="stable") == 80
    assert value("modship_router_weight", "modship_router_weight", role="canary") == 20
    assert value("modship_router_config_generation", "modship_router_config_generation", system="demo") == 7
    assert all(s.labels["system"] == "demo" for f in fams.values() for s in f.samples)


def test_no_canary_means_all_weight_on_stable() -> None:
    c = metrics.Counters("demo", lambda: metrics.Weights(stable="r1", canary=None, weight=0.0, generation=1))
    fams = {f.name: f for f in text_string_to_metric_families(c.render().decode())}
    assert [(s.labels["role"], s.value) for s in fams["modship_router_weight"].samples] == [("stable", 100.0)]
