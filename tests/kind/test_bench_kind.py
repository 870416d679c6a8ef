"""``make bench``'s kind part (``bench/kind.py``) with tiny durations, on the suite's cluster: it
builds its revision images, drives the operator, measures the router against the stable Service and
a failing canary's rollback, and reports the figures in the benchmark's result shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import kind, load, results
from tests.kind.test_router_in_cluster import operator_image
from tests.support.kindenv import KindCluster

pytestmark = [pytest.mark.slow, pytest.mark.kind]
FAIL_AFTER = 15  # seconds of healthy warm-up: the canary pod must start and be routed to within them


def test_the_kind_bench_measures_promotion_rollback_and_router_cost(
    kind_cluster: KindCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODSHIP_OPERATOR_IMAGE", operator_image())
    cfg = load.Load(duration=1, runs=1, connections=(1,), warmup=1)
    got = kind.measure(kind_cluster, tmp_path, cfg, runs=1, fail_after=FAIL_AFTER, router_port=30083, direct_port=30084)

    [run] = got["runs"]
    assert 0 < run["seconds_promote_to_canary"] < FAIL_AFTER, run  # it served before its fault began
    assert run["retried_on_stable"] > 0, run  # the canary failed and the router answered from stable
    assert run["seconds_to_stable"] > 0, run
    for target in (kind.DIRECT, kind.ROUTER):
        [sample] = got["cost"].samples[(target, 1)]
        assert sample.requests > 0 and sample.errors == 0, (target, sample)

    local = {"figures": {"seconds_promote_to_canary": 9.0, "seconds_to_stable_median": 0.5, "failed_requests_max": 0}}
    r = kind.report({**local, "ratio": 0.5, "met": True, "checks": []}, got, cluster_s=0)
    assert [c["name"] for c in r["checks"]][:2] == [
        "kind: s from first failure to 100 % stable",
        "kind: failed client requests (worst)",
    ]
    assert "router/direct throughput c1" in results.render({"kind": r})
