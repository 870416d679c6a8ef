"""The traffic-provider capability table: which checks, steps and policies a router cannot serve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.plan import capabilities as cap
from controller.plan.capabilities import Capability, Router
from controller.spec import parse
from controller.spec.rollout import BuiltinMetric, Rollout

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "rollouts" / "topic-classifier.yaml"
WORKLOAD = {"image": "registry.example.com/topic-classifier"}


def example(**spec: Any) -> Rollout:
    r = parse.load(Rollout, EXAMPLE)
    return Rollout.model_validate({**r.model_dump(by_alias=True, exclude_none=True), "spec": {
        **r.spec.model_dump(by_alias=True, exclude_none=True), **spec}})  # fmt: skip


def by_field(r: Rollout, router: Router | None = None) -> dict[str, cap.Gap]:
    return {g.field: g for g in cap.gaps(r, router)}


def test_the_modship_router_serves_everything_the_example_asks() -> None:
    r = example()
    assert cap.router_of(r.spec) is Router.MODSHIP
    assert cap.gaps(r) == []
    assert cap.CAPABILITIES[Router.MODSHIP] == frozenset(Capability)


@pytest.mark.parametrize(
    ("routing", "router"),
    [
        ({"gatewayAPI": {"httpRoute": "web"}}, Router.GATEWAY_API),
        ({"istio": {"virtualService": "web"}}, Router.ISTIO),
        ({"nginx": {"ingress": "web"}}, Router.NGINX),
        ({"modship": {}}, Router.MODSHIP),
        (None, Router.REPLICAS),
    ],
)
def test_router_of_follows_traffic_routing_then_workload(routing: dict[str, Any] | None, router: Router) -> None:
    spec: dict[str, Any] = {"workload": WORKLOAD}
    if routing:
        spec["trafficRouting"] = routing
    assert cap.router_of(example(**spec).spec) is router


def test_gateway_api_mirrors_but_cannot_measure_disagreement_nor_builtin_checks() -> None:
    r = example(workload=WORKLOAD, trafficRouting={"gatewayAPI": {"httpRoute": "web"}})
    found = by_field(r)
    checks = [c.name for c in r.spec.analysis.checks]
    assert sorted(found) == sorted(f"spec.analysis.checks[{i}]" for i in range(len(checks)))  # all builtin
    dis = found[f"spec.analysis.checks[{checks.index('disagreement')}]"]
    assert dis.needs is Capability.ANSWER_COMPARISON
    assert dis.message == (
        "check disagreement (disagreement): Gateway API mirrors requests but drops the mirrored answers, "
        "so disagreement on mirrored traffic cannot be measured"
    )
    err = found[f"spec.analysis.checks[{checks.index('error-rate')}]"]
    assert err.needs is Capability.TELEMETRY
    assert "builtin errorRate comes from the modship router's per-revision telemetry" in err.message
    assert err.message.endswith("measure it with provider prometheus and a query on Gateway API's metrics")
    shift = found[f"spec.analysis.checks[{checks.index('prediction-shift')}]"]
    assert shift.message.endswith("no Gateway API metric carries the answers or inputs it needs")
    fb = found[f"spec.analysis.checks[{checks.index('fallback-rate')}]"]
    assert fb.needs is Capability.FALLBACK
    assert not any(".steps[" in f for f in found)  # Gateway API mirrors: setMirror is served


@pytest.mark.parametrize("router", [Router.NGINX, Router.REPLICAS])
def test_routers_without_mirroring_skip_set_mirror_and_say_why_disagreement_is_lost(router: Router) -> None:
    r = example(workload=WORKLOAD)
    found = by_field(r, router)
    assert found["spec.strategy.canary.steps[0].setMirror"].needs is Capability.MIRROR
    assert "steps[2].setMirror" not in " ".join(found)  # setMirror 0 asks nothing of the router
    checks = [c.name for c in r.spec.analysis.checks]
    dis = found[f"spec.analysis.checks[{checks.index('disagreement')}]"]
    assert dis.needs is Capability.MIRROR
    assert dis.message.endswith("cannot mirror, so disagreement on mirrored traffic cannot be measured")


def test_header_routes_and_sticky_policies() -> None:
    steps = [{"setHeaderRoute": {"name": "x-canary"}}, {"setWeight": 50}]
    r = example(workload=WORKLOAD, strategy={"canary": {"steps": steps}}, analysis={"checks": []},
                policies={"stickyHeader": "x-user"})  # fmt: skip
    assert set(by_field(r)) == {"spec.strategy.canary.steps[0].setHeaderRoute", "spec.policies.stickyHeader"}
    assert set(by_field(r, Router.ISTIO)) == {"spec.policies.stickyHeader"}
    assert by_field(r, Router.MODSHIP) == {}


def test_prometheus_checks_are_the_querys_business() -> None:
    checks = [{"name": "err", "provider": "prometheus", "query": "sum(rate(x[1m]))", "threshold": {"max": 1}}]
    r = example(workload=WORKLOAD, analysis={"checks": checks}, prometheus="http://prom:9090")
    assert [g for g in cap.gaps(r, Router.NGINX) if g.field.startswith("spec.analysis")] == []


def test_every_metric_and_router_has_an_entry_and_a_message() -> None:
    assert set(cap.NEEDS) == set(BuiltinMetric)
    assert set(cap.CAPABILITIES) == set(Router) == set(cap.LABELS)
    for router in Router:
        for metric in BuiltinMetric:
            checks = [{"name": "c", "metric": metric.value, "threshold": {"max": 1}}]
            found = [g for g in cap.gaps(example(analysis={"checks": checks}), router) if "checks[" in g.field]
            served = all(n in cap.CAPABILITIES[router] for n in cap.NEEDS[metric])
            assert (found == []) is served, (router, metric)
            assert all(g.message.startswith(f"check c ({metric.value}): ") for g in found)


def test_summary_is_one_line() -> None:
    r = example(workload=WORKLOAD, trafficRouting={"istio": {"virtualService": "web"}})
    line = cap.summary(cap.gaps(r), Router.ISTIO)
    assert line.startswith("Istio cannot serve: check error-rate (errorRate): ")
    assert "\n" not in line


def test_the_operator_condition_uses_the_same_words() -> None:
    from controller.entrypoints.operator_cycle import _capabilities_note

    r = example(workload=WORKLOAD, trafficRouting={"nginx": {"ingress": "web"}})
    ok, reason, message = _capabilities_note(r)["Capabilities"]
    assert (ok, reason) == (False, "UnservableByTrafficProvider")
    assert message == cap.summary(cap.gaps(r), Router.NGINX)
    assert "step 0 setMirror: NGINX Ingress cannot mirror; the step is skipped" in message
    assert _capabilities_note(example())["Capabilities"] == (
        True, "Served", "the modship router serves every check, step and policy of this Rollout"
    )  # fmt: skip


def test_modships_router_in_the_cluster_serves_everything() -> None:
    r = example(workload=WORKLOAD, trafficRouting={"modship": {"replicas": 2}}, policies={"stickyHeader": "x-user"})
    assert cap.router_of(r.spec) is Router.MODSHIP
    assert cap.gaps(r) == []
