"""The operator on a real control plane: canaries whose pods kwok makes Ready, traffic read back
from the API server (Gateway API, Istio, NGINX, replica ratios), Prometheus analysis with automatic
rollback, SIGKILL and resume, two replicas behind a Lease, bad specs, deletion, RBAC.

Each test gets its own namespace and its own operator subprocess(es) (``--lease-duration 3``).
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client, config
from prometheus_client.parser import text_string_to_metric_families

from controller.adapters.kube_rollouts import KubeRollouts
from controller.apply.kube_control import KubeControl
from controller.spec.control import Actor, Command, PromoteRequest, ToggleRequest
from tests.k8s.operator_support import (
    CRD,
    GROUP,
    PLURAL,
    VERSION,
    Cluster,
    OperatorProcess,
    lease_holder,
    poll,
    rev,
    rollout_doc,
)
from tests.support.exporter import Exporter
from tests.support.k8senv import ControlPlane
from tests.support.prometheus import PrometheusServer
from tests.support.services import free_port

ME = Actor(user="ignored: the API server says who", reason="k8s test")

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

StartOperator = Callable[..., OperatorProcess]


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> Iterator[Cluster]:
    cp = control_plane
    cp.kubectl("apply", "--server-side", "--force-conflicts", f"-f={CRD}")
    gateway = cp.crd_dir / "gateway-api" / "gateway.networking.k8s.io_httproutes.yaml"
    istio = cp.crd_dir / "istio" / "customresourcedefinitions.gen.yaml"
    cp.kubectl("apply", "--server-side", "--force-conflicts", f"-f={gateway}", f"-f={istio}")
    cp.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/rollouts.modship.dev",
        "crd/httproutes.gateway.networking.k8s.io",
        "crd/virtualservices.networking.istio.io",
    )
    with config.new_client_from_config(config_file=str(cp.kubeconfig)) as api:
        yield Cluster(cp, api)


@pytest.fixture
def ns(cluster: Cluster) -> Iterator[str]:
    name = f"op-{uuid.uuid4().hex[:8]}"
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    # no operator is left to honour the finalizers: let the namespace go
    for obj in cluster.custom.list_namespaced_custom_object(GROUP, VERSION, name, PLURAL)["items"]:
        cluster.custom.patch_namespaced_custom_object(
            GROUP, VERSION, name, PLURAL, obj["metadata"]["name"], {"metadata": {"finalizers": None}}
        )
    cluster.core.delete_namespace(name)


@pytest.fixture
def operators(cluster: Cluster, ns: str, tmp_path: Path) -> Iterator[StartOperator]:
    started: list[OperatorProcess] = []

    def start(
        identity: str = "a", *, kubeconfig: Path | None = None, env: dict[str, str] | None = None, wait: bool = True
    ) -> OperatorProcess:
        p = OperatorProcess(kubeconfig or cluster.cp.kubeconfig, ns, tmp_path, identity=identity, env=env)
        started.append(p)
        if wait:

            def holds() -> bool:
                assert p.alive(), p.log()
                return lease_holder(cluster, ns) == identity

            poll(f"operator {identity} to hold the lease", holds, timeout=30)
        return p

    yield start
    for p in started:
        p.stop()
        print(f"--- operator {p.identity} ---\n{p.log()[-6000:]}")


def httproute(name: str, backend: str) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"name": "public"}],
            "hostnames": ["shop.example.com"],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [{"name": backend, "port": 3000}],
                }
            ],
        },
    }


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def dedup(xs: list[Any]) -> list[Any]:
    return [x for i, x in enumerate(xs) if i == 0 or xs[i - 1] != x]


# -- a ServiceAccount bound by least privilege ------------------------------------------------------

OPERATOR_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["modship.dev"], "resources": ["rollouts"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["modship.dev"], "resources": ["rollouts/status"], "verbs": ["get", "patch"]},
    {"apiGroups": ["modship.dev"], "resources": ["rollouts/finalizers"], "verbs": ["update"]},
    {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {"apiGroups": [""], "resources": ["services", "configmaps"], "verbs": ["get", "list", "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes"], "verbs": ["get", "patch"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": ["modship-operator"],
        "verbs": ["get", "patch"],
    },
]


def service_account_kubeconfig(cluster: Cluster, ns: str, tmp_path: Path) -> Path:
    """A kubeconfig holding a token of ServiceAccount ``modship-operator``, bound to OPERATOR_RULES."""
    sa, docs = "modship-operator", []
    docs.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}})
    docs.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": sa},
            "rules": OPERATOR_RULES,
        }
    )
    docs.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": sa},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
        }
    )
    for doc in docs:
        cluster.apply(ns, doc)
    token = cluster.cp.kubectl("create", "token", sa, "-n", ns, "--duration=1h").stdout.strip()
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "t", "cluster": {"server": cluster.cp.server, "certificate-authority": str(cluster.cp.ca_file)}}
        ],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": sa, "namespace": ns}}],
        "current-context": "t",
    }
    path = tmp_path / "sa.kubeconfig"
    path.write_text(json.dumps(cfg))
    return path


# -- Gateway API: weights step by step ---------------------------------------------------------------------


def test_gateway_canary_moves_weights_step_by_step(
    cluster: Cluster, ns: str, operators: StartOperator, tmp_path: Path
) -> None:
    kubeconfig = service_account_kubeconfig(cluster, ns, tmp_path)
    denied = cluster.cp.kubectl("auth", "can-i", "list", "secrets", "-n", ns, f"--kubeconfig={kubeconfig}", check=False)
    assert denied.stdout.strip() == "no"
    cluster.apply(ns, httproute("web", "shop-stable"))
    steps = [
        {"setWeight": 20},
        {"pause": {"duration": "1s"}},
        {"setWeight": 50},
        {"pause": {"duration": "1s"}},
        {"setHeaderRoute": {"name": "X-Canary", "value": "on"}},
        {"setMirror": {"percent": 25}},
        {"setWeight": 80},
        {"pause": {"duration": "1s"}},
    ]
    doc = rollout_doc("shop", revision=rev(1), steps=steps, routing={"gatewayAPI": {"httpRoute": "web"}}, replicas=2)
    cluster.apply(ns, doc)
    operators("sa", kubeconfig=kubeconfig)
    cluster.wait_phase(ns, "shop", "Idle", stable=rev(1))
    assert cluster.weights(ns, "web") == {"shop-stable": 100}

    cluster.promote(ns, "shop", rev(2))
    seen: list[tuple[int, bool, int | None]] = []  # (canary weight, header rule, mirror percent)
    mirroring: set[str] = set()  # reasons of the Mirroring condition seen

    def watch() -> bool:
        route = cluster.custom_obj(ns, "gateway.networking.k8s.io", "v1", "httproutes", "web")
        rules = route["spec"]["rules"]
        header = [r for r in rules if r.get("name") == "modship-canary-header"]
        weighted = next(r for r in rules if r.get("name") != "modship-canary-header")
        canary = {b["name"]: b.get("weight", 1) for b in weighted["backendRefs"]}.get("shop-canary", 0)
        mirror = next((f["requestMirror"].get("percent") for f in weighted.get("filters") or []), None)
        if header:
            assert header[0]["matches"][0]["headers"] == [{"name": "x-canary", "type": "Exact", "value": "on"}]
            assert header[0]["backendRefs"][0]["name"] == "shop-canary"
        seen.append((canary, bool(header), mirror))
        st = cluster.status(ns, "shop")
        mirroring.add(condition(st, "Mirroring").get("reason", ""))
        return st.get("phase") == "Promoted" and st.get("stableRevision") == rev(2)

    poll("the canary to be promoted", watch, interval=0.05)
    states = dedup(seen)
    weights = dedup([w for w, _, _ in states if w])
    assert weights == [20, 50, 80], states
    assert (80, True, 25) in states  # header route and 25 % mirroring while at 80 %
    assert cluster.weights(ns, "web") == {"shop-stable": 100}  # promoted: everything to the new stable

    # read back what the operator created
    d = cluster.apps.read_namespaced_deployment(f"shop-{rev(2)}", ns)
    labels = d.metadata.labels
    assert labels["modship.dev/revision"] == rev(2) and labels["app.kubernetes.io/managed-by"] == "modship"
    assert labels["app.kubernetes.io/name"] == "shop" and labels["modship.dev/system"] == "shop"
    owner = d.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.controller) == ("Rollout", "shop", True)
    c = d.spec.template.spec.containers[0]
    assert c.image == f"registry.example.com/shop:{rev(2)}" and c.ports[0].container_port == 3000
    assert c.readiness_probe.http_get.path == "/readyz" and c.liveness_probe.http_get.path == "/livez"
    env = {e.name: e.value for e in c.env}
    assert env["MODSHIP_FLAGS_FILE"] == "/etc/modship/flags/flags.json"
    assert d.spec.template.spec.volumes[0].config_map.name == f"shop-{rev(2)}-flags"
    assert d.status.available_replicas == 2
    services = {s.metadata.name: s.spec.selector for s in cluster.core.list_namespaced_service(ns).items}
    assert services["shop-stable"] == {"modship.dev/system": "shop", "modship.dev/revision": rev(2)}
    assert services["shop-canary"] == services["shop-stable"]  # nothing in flight: canary selects stable
    assert services["shop"] == {"modship.dev/system": "shop"}
    assert cluster.apps.read_namespaced_deployment(f"shop-{rev(1)}", ns).spec.replicas == 2  # kept warm

    st = cluster.status(ns, "shop")
    assert (st["previousRevision"], st["step"], st["weight"]) == (rev(1), len(steps), 0)
    assert st["observedGeneration"] == cluster.rollout(ns, "shop")["metadata"]["generation"]
    assert condition(st, "Ready")["status"] == "True" and "Mirroring" in mirroring
    events = poll(  # Events follow the status write
        "the Promoted Event", lambda: (ev := cluster.events(ns, "shop")) and ev[-1].reason == "Promoted" and ev
    )
    assert [e.message for e in events if e.reason == "WeightChanged"] == [
        f"canary {rev(2)} at {w} %" for w in (20, 50, 80)
    ]
    assert {e.reporting_instance for e in events} == {"sa"}
    assert events[-1].reason == "Promoted" and events[-1].type == "Normal"


# -- analysis on Prometheus ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def metrics() -> Iterator[tuple[Exporter, PrometheusServer]]:
    with Exporter(system="scorer").running() as exporter:
        for n, errors in ((1, 0.0), (2, 0.0), (3, 0.5)):
            exporter.control(rev(n), rps=40, error_ratio=errors)
        with PrometheusServer([exporter.target]) as prom:
            prom.wait_targets_up()
            yield exporter, prom


def test_analysis_promotes_a_good_canary_and_rolls_back_a_failing_one(
    cluster: Cluster, ns: str, operators: StartOperator, metrics: tuple[Exporter, PrometheusServer]
) -> None:
    _, prom = metrics
    prom.wait_for_value(f'sum(rate(modship_requests_total{{revision="{rev(3)}",outcome="error"}}[3s]))')
    cluster.apply(ns, httproute("scorer", "scorer-stable"))
    check = {
        "name": "error-rate",
        "provider": "prometheus",
        "query": "template:error-rate",
        "threshold": {"max": 0.05},
        "window": "3s",
        "interval": "1s",
        "count": 2,
        "minSamples": 5,
    }
    steps = [{"setWeight": 50}, {"analysis": {"checks": ["error-rate"]}}, {"setWeight": 100}]
    routing = {"gatewayAPI": {"httpRoute": "scorer"}}
    cluster.apply(ns, rollout_doc("scorer", revision=rev(1), steps=steps, routing=routing, checks=[check]))
    port = free_port()
    # spec.prometheus is empty: the operator's default applies
    operators(env={"MODSHIP_PROMETHEUS_URL": prom.url, "MODSHIP_METRICS_PORT": str(port)})
    cluster.wait_phase(ns, "scorer", "Idle", stable=rev(1))

    cluster.promote(ns, "scorer", rev(2))  # 0 % errors
    weights: list[int] = []

    def promoted() -> bool:
        weights.append(cluster.weights(ns, "scorer").get("scorer-canary", 0))
        return cluster.status(ns, "scorer").get("stableRevision") == rev(2)

    poll("the good canary to be promoted", promoted, interval=0.05)
    assert 50 in weights
    st = cluster.wait_phase(ns, "scorer", "Promoted")
    assert condition(st, "Metrics") == {**condition(st, "Metrics"), "status": "True", "reason": "Prometheus"}
    served = {
        "status": "True",
        "reason": "Served",
        "message": "Gateway API serves every check, step and policy of this Rollout",
    }
    assert condition(st, "Capabilities") == {**condition(st, "Capabilities"), **served}

    cluster.promote(ns, "scorer", rev(3))  # 50 % errors
    st = cluster.wait_phase(ns, "scorer", "Aborted")
    assert st["reason"] == "AnalysisFailed" and st["canaryRevision"] == rev(3)
    assert cluster.weights(ns, "scorer") == {"scorer-stable": 100}
    selector = cluster.core.read_namespaced_service("scorer-stable", ns).spec.selector
    assert selector["modship.dev/revision"] == rev(2)
    poll(
        "the failed canary's Deployment to go",
        lambda: not cluster.apps.list_namespaced_deployment(ns, label_selector=f"modship.dev/revision={rev(3)}").items,
    )
    run = st["machine"]["step_analysis"]["error-rate"]
    assert run["failures"] == 1 and run["recent"][-1]["value"] == pytest.approx(0.5, abs=0.1)
    events = poll(  # Events follow the status write
        "the AnalysisFailed Event",
        lambda: (ev := cluster.events(ns, "scorer")) and any(e.reason == "AnalysisFailed" for e in ev) and ev,
    )
    failed = [e for e in events if e.reason == "AnalysisFailed"]
    assert len(failed) == 1 and failed[0].type == "Warning"
    assert [e.reason for e in events].count("AnalysisSuccessful") == 1

    # what the chart's dashboard reads from the operator
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    mine = {"namespace": ns, "rollout": "scorer"}
    assert metric(text, "modship_rollout_rollbacks_total", **mine, reason="AnalysisFailed") == 1
    assert metric(text, "modship_rollout_phase", **mine, phase="Aborted") == 1
    assert metric(text, "modship_rollout_phase", **mine, phase="Promoted") == 0
    assert metric(text, "modship_rollout_weight", **mine) == 0
    assert (
        metric(text, "modship_rollout_analysis_verdicts_total", **mine, check="error-rate", verdict="Successful") >= 2
    )
    assert metric(text, "modship_rollout_analysis_verdicts_total", **mine, check="error-rate", verdict="Failed") == 1


def metric(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


# -- restarts and replicas ----------------------------------------------------------------------------------------

PAUSED_STEPS = [
    {"setWeight": 10},
    {"pause": {"duration": "1500ms"}},
    {"setWeight": 20},
    {"pause": {"duration": "1500ms"}},
    {"setWeight": 30},
    {"pause": {"duration": "1500ms"}},
    {"setWeight": 40},
    {"pause": {"duration": "1500ms"}},
]


def test_sigkill_mid_rollout_resumes_at_the_same_step(cluster: Cluster, ns: str, operators: StartOperator) -> None:
    cluster.apply(ns, rollout_doc("resume", revision=rev(1), steps=PAUSED_STEPS))
    first = operators("first")
    cluster.wait_phase(ns, "resume", "Idle", stable=rev(1))
    cluster.promote(ns, "resume", rev(2))
    poll("step 3 (the second pause)", lambda: cluster.status(ns, "resume").get("step") == 3)
    first.kill()
    at_kill = cluster.status(ns, "resume")
    # the last transition's Events are named in the status; lose one as a crash right after the
    # status write would, and the next operator posts it again under the same name
    last = at_kill["lastEvents"]
    assert [e["reason"] for e in last] == ["WeightChanged"] and "at 20 %" in last[0]["message"]
    try:
        cluster.core.delete_namespaced_event(last[0]["name"], ns)
    except client.ApiException as exc:  # killed between the status write and the post: lost already
        if exc.status != 404:
            raise
    operators("second")  # takes the lease once the dead one's expires
    poll("the lost Event to be posted again", lambda: cluster.core.read_namespaced_event(last[0]["name"], ns))
    steps: list[int] = []

    def done() -> bool:
        st = cluster.status(ns, "resume")
        steps.append(st.get("step", 0))
        return st.get("phase") == "Promoted"

    poll("the rollout to finish after the restart", done, interval=0.05)
    assert steps == sorted(steps) and steps[0] >= at_kill["step"]  # never back
    events = poll(  # the operator posts Events after it writes the status: wait for the last one
        "the Promoted Event",
        lambda: (ev := cluster.events(ns, "resume")) and any(e.reason == "Promoted" for e in ev) and ev,
    )
    reasons = [e.reason for e in events]
    assert [e.message for e in events if e.reason == "WeightChanged"] == [
        f"canary {rev(2)} at {w} %" for w in (10, 20, 30, 40)
    ]  # none repeated, none skipped
    assert reasons.count("RolloutStarted") == 1 and reasons.count("Promoted") == 1
    by = [(e.reason, e.reporting_instance) for e in events]
    assert ("RolloutStarted", "first") in by and ("Promoted", "second") in by
    assert cluster.core.read_namespaced_event(last[0]["name"], ns).reporting_instance == "second"
    assert {"first", "second"} == {i for _, i in by}


def test_only_the_lease_holder_acts(cluster: Cluster, ns: str, operators: StartOperator) -> None:
    cluster.apply(ns, rollout_doc("pair", revision=rev(1), steps=PAUSED_STEPS[:4]))
    a = operators("a", wait=False)
    b = operators("b", wait=False)
    holder = poll("a lease holder", lambda: lease_holder(cluster, ns))
    other = b if holder == "a" else a
    cluster.wait_phase(ns, "pair", "Idle", stable=rev(1))
    cluster.promote(ns, "pair", rev(2))
    cluster.wait_phase(ns, "pair", "Promoted", stable=rev(2))
    assert lease_holder(cluster, ns) == holder
    assert {e.reporting_instance for e in cluster.events(ns, "pair")} == {holder}
    assert " step " not in other.log()  # the other replica never reconciled

    (a if holder == "a" else b).kill()
    cluster.promote(ns, "pair", rev(3))
    poll("the other replica to take the lease", lambda: lease_holder(cluster, ns) == other.identity, timeout=20)
    cluster.wait_phase(ns, "pair", "Promoted", stable=rev(3))
    late = [e for e in cluster.events(ns, "pair") if rev(3) in e.message]
    assert late and {e.reporting_instance for e in late} == {other.identity}


def test_a_canary_that_cannot_start_is_aborted(cluster: Cluster, ns: str, operators: StartOperator) -> None:
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "pods"}, "spec": {"hard": {"pods": "1"}}}
    cluster.apply(ns, quota)
    poll("the quota to be counted", lambda: cluster.core.read_namespaced_resource_quota("pods", ns).status.hard)
    cluster.apply(ns, rollout_doc("stuck", revision=rev(1), steps=[{"setWeight": 50}]))
    operators()
    cluster.wait_phase(ns, "stuck", "Idle", stable=rev(1))
    cluster.promote(ns, "stuck", rev(2))  # its pod exceeds the quota: the ReplicaSet cannot create it
    st = cluster.wait_phase(ns, "stuck", "Aborted")
    assert st["reason"] == "CanaryFailed" and "ReplicaFailure" in st["message"], st["message"]
    assert cluster.status(ns, "stuck")["stableRevision"] == rev(1)


# -- bad input and deletion -------------------------------------------------------------------------------------------


def test_malformed_rollouts_are_rejected_or_marked_failed(cluster: Cluster, ns: str, operators: StartOperator) -> None:
    over = rollout_doc("over", revision=rev(1), steps=[{"setWeight": 150}])
    res = cluster.cp.kubectl("apply", "--server-side", "-n", ns, "-f", "-", input=json.dumps(over), check=False)
    assert res.returncode != 0 and "spec.strategy.canary.steps[0].setWeight" in res.stderr, res.stderr
    bad_revision = rollout_doc("latest", revision="latest", steps=[{"setWeight": 10}])
    res = cluster.cp.kubectl("apply", "--server-side", "-n", ns, "-f", "-", input=json.dumps(bad_revision), check=False)
    assert res.returncode != 0 and "spec.revision" in res.stderr, res.stderr

    # schema-valid, but it names a check that does not exist
    dangling = rollout_doc("dangling", revision=rev(1), steps=[{"analysis": {"checks": ["nope"]}}])
    cluster.apply(ns, dangling)
    no_workload = rollout_doc("bare", revision=rev(1), steps=[{"setWeight": 10}])
    del no_workload["spec"]["workload"]
    cluster.apply(ns, no_workload)
    op = operators()
    st = cluster.wait_phase(ns, "dangling", "Failed")
    ready = condition(st, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert "spec.strategy.canary.steps[0].analysis.checks" in ready["message"] and "'nope'" in ready["message"]
    assert st["observedGeneration"] == 1
    st = cluster.wait_phase(ns, "bare", "Failed")
    assert "spec.workload" in condition(st, "Ready")["message"]

    cluster.patch_spec(ns, "dangling", {"strategy": {"canary": {"steps": [{"setWeight": 10}]}}})
    st = cluster.wait_phase(ns, "dangling", "Idle", stable=rev(1))
    assert condition(st, "Ready")["status"] == "True" and st["observedGeneration"] == 2
    assert op.alive()
    assert len(re.findall(r"dangling: cannot run this spec", op.log())) <= 3  # not a crash loop


def test_deleting_a_rollout_cleans_up(cluster: Cluster, ns: str, operators: StartOperator) -> None:
    cluster.apply(ns, httproute("gone", "gone-stable"))
    steps = [{"setWeight": 30}, {"setHeaderRoute": {"name": "x-canary"}}, {"setMirror": {"percent": 10}}, {"pause": {}}]
    cluster.apply(ns, rollout_doc("gone", revision=rev(1), steps=steps, routing={"gatewayAPI": {"httpRoute": "gone"}}))
    operators()
    cluster.wait_phase(ns, "gone", "Idle")
    cluster.promote(ns, "gone", rev(2))
    cluster.wait_phase(ns, "gone", "Paused")
    route = cluster.custom_obj(ns, "gateway.networking.k8s.io", "v1", "httproutes", "gone")
    assert len(route["spec"]["rules"]) == 2  # the header rule was added
    selector = "modship.dev/rollout=gone"
    assert len(cluster.apps.list_namespaced_deployment(ns, label_selector=selector).items) == 2

    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "gone")
    poll(
        "the Rollout to go",
        lambda: not cluster.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"],
    )
    assert not cluster.apps.list_namespaced_deployment(ns, label_selector=selector).items
    assert not cluster.core.list_namespaced_service(ns, label_selector=selector).items
    assert not cluster.core.list_namespaced_config_map(ns, label_selector=selector).items
    route = cluster.custom_obj(ns, "gateway.networking.k8s.io", "v1", "httproutes", "gone")
    assert [r.get("name") for r in route["spec"]["rules"]] == [None]  # the header rule is gone
    rule = route["spec"]["rules"][0]
    assert [b["name"] for b in rule["backendRefs"]] == ["gone-stable"] and "filters" not in rule
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public"}]


# -- Istio, NGINX, replica ratios ---------------------------------------------------------------------------------

ROUTER_STEPS = [
    {"setWeight": 30},
    {"setHeaderRoute": {"name": "x-canary", "value": "1"}},
    {"setMirror": {"percent": 20}},
    {"pause": {}},
]


def test_istio_and_nginx_get_the_right_objects(cluster: Cluster, ns: str, operators: StartOperator) -> None:
    vs = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "mesh"},
        "spec": {
            "hosts": ["mesh.example.com"],
            "http": [{"route": [{"destination": {"host": "mesh-stable", "port": {"number": 3000}}}]}],
        },
    }
    ingress = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "edge"},
        "spec": {
            "ingressClassName": "nginx",
            "rules": [
                {
                    "host": "edge.example.com",
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": "edge-stable", "port": {"number": 3000}}},
                            }
                        ]
                    },
                }
            ],
        },
    }
    cluster.apply(ns, vs)
    cluster.apply(ns, ingress)
    cluster.apply(
        ns, rollout_doc("mesh", revision=rev(1), steps=ROUTER_STEPS, routing={"istio": {"virtualService": "mesh"}})
    )
    cluster.apply(ns, rollout_doc("edge", revision=rev(1), steps=ROUTER_STEPS, routing={"nginx": {"ingress": "edge"}}))
    operators()
    for name in ("mesh", "edge"):
        cluster.wait_phase(ns, name, "Idle", stable=rev(1))
        cluster.promote(ns, name, rev(2))
    for name in ("mesh", "edge"):
        cluster.wait_phase(ns, name, "Paused")

    http = cluster.custom_obj(ns, "networking.istio.io", "v1", "virtualservices", "mesh")["spec"]["http"]
    assert http[0]["match"] == [{"headers": {"x-canary": {"exact": "1"}}}]
    assert http[0]["route"] == [{"destination": {"host": "mesh-canary"}}]
    port = {"number": 3000}
    assert http[1]["route"] == [
        {"destination": {"host": "mesh-stable", "port": port}, "weight": 70},
        {"destination": {"host": "mesh-canary", "port": port}, "weight": 30},
    ]
    assert http[1]["mirror"] == {"host": "mesh-canary", "port": port} and http[1]["mirrorPercentage"] == {"value": 20}

    twin = cluster.net.read_namespaced_ingress("edge-canary", ns)
    ann = twin.metadata.annotations
    assert ann["nginx.ingress.kubernetes.io/canary"] == "true"
    assert ann["nginx.ingress.kubernetes.io/canary-weight"] == "30"
    assert ann["nginx.ingress.kubernetes.io/canary-by-header"] == "x-canary"
    assert ann["nginx.ingress.kubernetes.io/canary-by-header-value"] == "1"
    assert twin.spec.ingress_class_name == "nginx" and twin.spec.rules[0].host == "edge.example.com"
    assert twin.spec.rules[0].http.paths[0].backend.service.name == "edge-canary"
    assert twin.metadata.owner_references[0].name == "edge"
    mirroring = condition(cluster.status(ns, "edge"), "Mirroring")
    assert (mirroring["status"], mirroring["reason"]) == ("False", "MirrorUnsupported")

    rollouts = KubeRollouts(kubeconfig=str(cluster.cp.kubeconfig), namespace=ns)
    k = KubeControl(rollouts)
    for name in ("mesh", "edge"):
        assert k.command(name, Command.RESUME, actor=ME).command == "resume"
    for name in ("mesh", "edge"):
        cluster.wait_phase(ns, name, "Promoted", stable=rev(2))
    http = cluster.custom_obj(ns, "networking.istio.io", "v1", "virtualservices", "mesh")["spec"]["http"]
    assert http == [{"route": [{"destination": {"host": "mesh-stable", "port": port}, "weight": 100}]}]
    ann = cluster.net.read_namespaced_ingress("edge-canary", ns).metadata.annotations
    assert ann["nginx.ingress.kubernetes.io/canary-weight"] == "0"
    assert "nginx.ingress.kubernetes.io/canary-by-header" not in ann
    rollouts.close()


def test_the_modship_router_is_deployed_and_traffic_waits_for_its_pods(
    cluster: Cluster, ns: str, operators: StartOperator
) -> None:
    """``trafficRouting.modship``: the router Deployment (from the operator's image), its token Secret,
    one Service per revision for it to call and ``S`` in front of it. kwok's pods cannot answer (and
    their addresses must not be dialled here), so the router pods are kept Pending by a node selector:
    the split is never reported as applied while no router pod has it. Real router pods serving real
    requests through this provider need a real node (issue 12's kind suite)."""
    image = "modship.local/operator:kwok-test"
    routing = {"modship": {"replicas": 2, "port": 8080, "nodeSelector": {"modship.dev/test": "no-such-node"}}}
    cluster.apply(ns, rollout_doc("mr", revision=rev(1), steps=ROUTER_STEPS, routing=routing))
    op = operators(env={"MODSHIP_ROUTER_IMAGE": image})

    def waiting() -> dict[str, Any] | None:
        ready = condition(cluster.status(ns, "mr"), "Ready")
        return ready if "mr-router runs yet" in ready.get("message", "") else None

    ready = poll("the operator waits for the router pods", waiting)
    assert ready["status"] == "False" and ready["reason"] == "Unavailable"
    d = cluster.apps.read_namespaced_deployment("mr-router", ns)
    (c,) = d.spec.template.spec.containers
    assert (c.image, d.spec.replicas, d.spec.template.spec.node_selector) == (
        image,
        2,
        routing["modship"]["nodeSelector"],
    )
    assert c.env[0].value_from.secret_key_ref.name == "modship-router-token"
    assert d.metadata.owner_references[0].name == "mr"
    assert cluster.core.read_namespaced_service("mr", ns).spec.selector == {
        "modship.dev/system": "mr",
        "modship.dev/component": "router",
    }
    upstream = cluster.core.read_namespaced_service(f"mr-{rev(1)}", ns).spec.selector
    assert upstream == {"modship.dev/system": "mr", "modship.dev/revision": rev(1)}
    secret = cluster.core.read_namespaced_secret("modship-router-token", ns)
    token = base64.b64decode(secret.data["token"]).decode()
    assert len(token) >= 32
    pods = cluster.core.list_namespaced_pod(ns, label_selector="modship.dev/component=router").items
    assert len(pods) == 2 and all(p.status.phase == "Pending" for p in pods)
    said = json.dumps(cluster.status(ns, "mr")) + op.log() + " ".join(e.message or "" for e in cluster.events(ns, "mr"))
    assert token not in said


def test_replica_ratios_scale_deployments(cluster: Cluster, ns: str, operators: StartOperator) -> None:
    steps = [
        {"setWeight": 25},
        {"pause": {}},
        {"setWeight": 50},
        {"setHeaderRoute": {"name": "x-canary"}},
        {"pause": {}},
    ]
    cluster.apply(ns, rollout_doc("ratio", revision=rev(1), steps=steps, replicas=4))
    operators()
    cluster.wait_phase(ns, "ratio", "Idle", stable=rev(1))
    rollouts = KubeRollouts(kubeconfig=str(cluster.cp.kubeconfig), namespace=ns)
    k = KubeControl(rollouts)
    assert k.toggle("ratio", ToggleRequest(flag="guard", enabled=False, percent=50), actor=ME).flag == "guard"
    k.promote("ratio", PromoteRequest(revision=rev(2), modules=["head@2"]), actor=ME)

    def replicas() -> dict[str, int]:
        items = cluster.apps.list_namespaced_deployment(ns, label_selector="modship.dev/system=ratio").items
        return {d.metadata.labels["modship.dev/revision"]: d.spec.replicas for d in items}

    poll("25 %: 3 stable pods, 1 canary", lambda: replicas() == {rev(1): 3, rev(2): 1})
    cluster.wait_phase(ns, "ratio", "Paused")
    doc = k.status("ratio").wire()
    assert (doc["phase"], doc["weight"], doc["canary"]["revision"], doc["canary"]["modules"]) == (
        "Paused",
        25,
        rev(2),
        ["head@2"],
    )
    assert [s["state"] for s in doc["steps"]][:3] == ["done", "current", "pending"]
    assert doc["toggles"] == {"guard": {"enabled": False, "percent": 50.0}}
    flags = cluster.core.read_namespaced_config_map(f"ratio-{rev(1)}-flags", ns).data["flags.json"]
    assert json.loads(flags) == {"guard": {"enabled": False, "percent": 50.0}}
    assert cluster.core.read_namespaced_service("ratio", ns).spec.selector == {"modship.dev/system": "ratio"}
    services = {s.metadata.name for s in cluster.core.list_namespaced_service(ns).items}
    assert services == {"ratio"}  # no S-stable/S-canary: nothing routes to them without workload.roleServices

    k.command("ratio", Command.RESUME, actor=ME)
    poll("50 %: 2 and 2", lambda: replicas() == {rev(1): 2, rev(2): 2})
    poll("paused at step 4", lambda: cluster.status(ns, "ratio").get("step") == 4)
    st = cluster.wait_phase(ns, "ratio", "Paused")
    routing = condition(st, "TrafficRouting")
    assert (routing["status"], routing["reason"]) == ("False", "UnsupportedWithReplicaRatios")
    k.command("ratio", Command.RESUME, actor=ME)
    cluster.wait_phase(ns, "ratio", "Promoted", stable=rev(2))
    poll("the new stable at 4 pods, the warm previous one at 0", lambda: replicas() == {rev(1): 0, rev(2): 4})
    history = [h.wire() for h in k.history("ratio")]
    assert [(h["number"], h["revision"], h["role"]) for h in history] == [(1, rev(1), None), (2, rev(2), "stable")]
    asked = json.loads(rollouts.live("ratio")["metadata"]["annotations"]["modship.dev/last-request"])
    user = rollouts.user()  # the API server's SelfSubjectReview, not what the caller claimed
    assert user and user != ME.user and asked["user"] == user
    assert (asked["what"], asked["reason"]) == ("resume", "k8s test")
    rollouts.close()


def test_replica_ratios_one_replica_stops_the_previous_stable_at_promotion(
    cluster: Cluster, ns: str, operators: StartOperator
) -> None:
    """With one replica no readiness changes at promotion: the previous stable, which the root
    Service selects, must go to zero in the promoting cycle, not when the rollback window ends."""
    steps = [{"setWeight": 50}, {"pause": {"duration": "1s"}}]

    def doc(revision: str) -> dict[str, Any]:
        d = rollout_doc("one", revision=revision, steps=steps)
        d["spec"]["workload"]["roleServices"] = True  # S-stable and S-canary although nothing routes to them
        return d

    cluster.apply(ns, doc(rev(1)))
    operators()
    cluster.wait_phase(ns, "one", "Idle", stable=rev(1))
    selector = {"modship.dev/system": "one", "modship.dev/revision": rev(1)}
    assert cluster.core.read_namespaced_service("one-stable", ns).spec.selector == selector
    assert cluster.core.read_namespaced_service("one-canary", ns).spec.selector == selector

    def replicas() -> dict[str, int]:
        items = cluster.apps.list_namespaced_deployment(ns, label_selector="modship.dev/system=one").items
        return {d.metadata.labels["modship.dev/revision"]: d.spec.replicas for d in items}

    cluster.apply(ns, doc(rev(2)))
    poll("a canary pod beside the stable one", lambda: replicas() == {rev(1): 1, rev(2): 1})
    cluster.wait_phase(ns, "one", "Promoted", stable=rev(2))
    poll("the previous stable at 0 right after promotion", lambda: replicas() == {rev(1): 0, rev(2): 1}, timeout=30)
