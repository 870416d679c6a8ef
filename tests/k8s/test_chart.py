"""The Helm chart against real helm and a real API server: lint, templates, the values schema, an
install by server-side apply, RBAC proven with the chart's ServiceAccount, the Grafana dashboard, and
the GitOps manifests of ``modship render`` dry-run on the server (tools/k8s/build.sh builds it all).

ServiceMonitor: the control plane has no Prometheus Operator, so the test installs a minimal
``servicemonitors.monitoring.coreos.com`` CRD (spec preserved unvalidated) and applies the rendered
ServiceMonitor with a server-side dry run: that proves the group/version/kind, the name and the
namespace are accepted, not the Prometheus Operator's own schema of ``spec``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from controller.apply import gitops
from controller.entrypoints import cli_gitops
from tests.support.k8senv import ControlPlane

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "modship"
CRD = CHART / "crds" / "rollouts.modship.dev.yaml"
SYSTEM = REPO / "examples" / "systems" / "topic-classifier.yaml"
ROLLOUT = REPO / "examples" / "rollouts" / "topic-classifier.yaml"
RELEASE = "modship"
WAIT = "90s"  # every kubectl wait / rollout status below is bounded by this deadline
OPERATOR_METRICS = (
    "modship_rollout_weight",
    "modship_rollout_phase",
    "modship_rollout_analysis_verdicts_total",
    "modship_rollout_rollbacks_total",
)
SERVICE_METRICS = ("modship_requests_total", "modship_request_duration_seconds_bucket")
# Exactly what the operator may touch: (apiGroup, resource) -> verbs.
EXPECTED_RULES = {
    ("modship.dev", "rollouts"): {"get", "list", "watch", "update", "patch"},
    ("modship.dev", "rollouts/status"): {"get", "update", "patch"},
    ("modship.dev", "rollouts/finalizers"): {"update"},
    ("modship.dev", "approvals"): {"list"},
    ("", "pods"): {"list"},
    ("", "pods/proxy"): {"get", "update"},  # trafficRouting.modship: the router pods' admin API
    ("", "secrets"): {"get", "create"},  # get: only the router token, by name (below)
    ("apps", "deployments"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    ("", "configmaps"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("gateway.networking.k8s.io", "httproutes"): {"get", "list", "watch", "create", "update", "patch"},
    ("networking.istio.io", "virtualservices"): {"get", "list", "watch", "create", "update", "patch"},
    ("networking.k8s.io", "ingresses"): {"get", "list", "watch", "create", "update", "patch", "delete"},
}
SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {"kind": "ServiceMonitor", "listKind": "ServiceMonitorList", "plural": "servicemonitors"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "required": ["spec"],
                        "properties": {
                            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}


# -- helpers --------------------------------------------------------------------------------------


def template(cp: ControlPlane, *sets: str, namespace: str = "modship", check: bool = True) -> list[dict[str, Any]]:
    args = [a for s in sets for a in ("--set", s)]
    res = cp.helm("template", RELEASE, str(CHART), "--namespace", namespace, *args, check=check)
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def apply(cp: ControlPlane, docs: list[dict[str, Any]], *extra: str, namespace: str | None = None) -> str:
    ns = ("-n", namespace) if namespace else ()
    stream = "\n---\n".join(yaml.safe_dump(d) for d in docs)
    return cp.kubectl(
        "apply", "--server-side", "--field-manager=modship-test", *ns, *extra, "-f", "-", input=stream
    ).stdout


def install_crds(cp: ControlPlane, *files: Path) -> None:
    cp.kubectl("apply", "--server-side", "--force-conflicts", *(f"-f={f}" for f in files))
    names = [
        d["metadata"]["name"]
        for f in files
        for d in yaml.safe_load_all(f.read_text())
        if d and d["kind"] == "CustomResourceDefinition"
    ]
    cp.kubectl("wait", "--for=condition=Established", f"--timeout={WAIT}", *(f"crd/{n}" for n in names))


def can_i(cp: ControlPlane, sa: str, verb: str, resource: str, namespace: str, subresource: str = "") -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={sa}", "-n", namespace]
    if subresource:
        args.append(f"--subresource={subresource}")
    res = cp.kubectl(*args, check=False)
    answer = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    assert answer in ("yes", "no"), f"kubectl {' '.join(args)}: {res.stdout} {res.stderr}"
    return answer == "yes"


def new_namespace(cp: ControlPlane, prefix: str, **labels: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cp.kubectl("create", "namespace", name)
    if labels:
        cp.kubectl("label", "namespace", name, *(f"{k}={v}" for k, v in labels.items()))
    return name


@dataclass(frozen=True)
class Installed:
    namespace: str
    service_account: str  # system:serviceaccount:NS:NAME
    sa_name: str
    lease: str


@pytest.fixture(scope="module")
def routing_crds(control_plane: ControlPlane) -> None:
    """Gateway API and Istio CRDs (from cp.crd_dir), for the httproute/virtualservice checks."""
    files = sorted((control_plane.crd_dir / "gateway-api").glob("*.yaml"))
    files.append(control_plane.crd_dir / "istio" / "customresourcedefinitions.gen.yaml")
    # One gateway-api file is a ValidatingAdmissionPolicy, not a CRD: install_crds waits on CRDs only.
    install_crds(control_plane, *files)


@pytest.fixture(scope="module")
def installed(control_plane: ControlPlane, routing_crds: None) -> Iterator[Installed]:
    """The chart (default values) applied server-side into a namespace enforcing the restricted
    Pod Security Standard: the operator's pods exist only if its securityContext passes."""
    cp = control_plane
    ns = new_namespace(cp, "modship", **{"pod-security.kubernetes.io/enforce": "restricted"})
    install_crds(cp, CRD)
    docs = template(cp, "prometheus.url=http://prometheus.monitoring.svc:9090", namespace=ns)
    apply(cp, docs)
    cp.kubectl("rollout", "status", f"deployment/{RELEASE}", "-n", ns, f"--timeout={WAIT}")
    yield Installed(ns, f"system:serviceaccount:{ns}:{RELEASE}", RELEASE, f"{RELEASE}-leader")
    cp.kubectl("delete", "namespace", ns, "--wait=false")


# -- lint and templates (real helm, no cluster needed) ---------------------------------------------


@pytest.mark.parametrize(
    "args",
    [(), ("--strict",), ("--strict", "--set", "rbac.scope=cluster", "--set", "serviceMonitor.enabled=true")],
    ids=["default", "strict", "strict-cluster-servicemonitor"],
)
def test_helm_lint_is_clean(control_plane: ControlPlane, args: tuple[str, ...]) -> None:
    res = control_plane.helm("lint", str(CHART), *args, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "1 chart(s) linted, 0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


def test_template_default_values(control_plane: ControlPlane) -> None:
    docs = template(control_plane, "prometheus.url=http://prom:9090")
    assert kinds(docs) == [
        "ConfigMap",
        "Deployment",
        "Role",
        "Role",
        "RoleBinding",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "ValidatingAdmissionPolicyBinding",
    ]
    for d in docs:  # standard labels everywhere
        labels = d["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "modship" and labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm" and labels["helm.sh/chart"] == "modship-0.1.0"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
    dep = find(docs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/modship/modship:0.1.0"
    assert c["command"] == ["python", "-m", "controller.entrypoints.operator"]
    assert c["args"] == [
        "--namespace=modship",
        "--identity=$(POD_NAME)",
        "--lease-name=modship-leader",
        "--lease-namespace=$(POD_NAMESPACE)",
        "--lease-duration=15",
        "--renew-deadline=10",
        "--retry-period=2",
        "--liveness=http://0.0.0.0:8080/healthz",
    ]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env["MODSHIP_PROMETHEUS_URL"] == "http://prom:9090" and env["MODSHIP_METRICS_PORT"] == "9090"
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["livenessProbe"]["httpGet"] == c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert find(docs, "Role", "modship")["metadata"]["namespace"] == "modship"
    lease_rules = find(docs, "Role", "modship-leader-election")["rules"]
    assert {"resourceNames": ["modship-leader"], "verbs": ["get", "update", "patch"]}.items() <= lease_rules[1].items()


def test_template_cluster_scope_and_service_monitor(control_plane: ControlPlane) -> None:
    docs = template(control_plane, "rbac.scope=cluster", "serviceMonitor.enabled=true", namespace="ops")
    assert kinds(docs) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "ValidatingAdmissionPolicyBinding",
    ]
    role = find(docs, "ClusterRole")
    assert role["metadata"]["name"] == "ops-modship" and "namespace" not in role["metadata"]
    binding = find(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "modship", "namespace": "ops"}]
    assert find(docs, "Role")["metadata"]["name"] == "modship-leader-election"  # the Lease stays namespaced
    assert find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"][0] == "--all-namespaces"
    sm = find(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    svc = find(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"] == "metrics"


def test_template_watch_namespace(control_plane: ControlPlane) -> None:
    docs = template(control_plane, "watchNamespace=ml", namespace="ops")
    assert find(docs, "Role", "modship")["metadata"]["namespace"] == "ml"
    assert find(docs, "RoleBinding", "modship")["subjects"][0]["namespace"] == "ops"
    assert find(docs, "Role", "modship-leader-election")["metadata"]["namespace"] == "ops"
    args = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "--namespace=ml" and "--lease-namespace=$(POD_NAMESPACE)" in args  # the Lease stays in ops


def test_template_notifications_secret(control_plane: ControlPlane) -> None:
    pod = find(template(control_plane, "notifications.secretName=hooks"), "Deployment")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert "--notifications=/etc/modship/notifications/notifications.yaml" in c["args"]
    assert {"name": "notifications", "mountPath": "/etc/modship/notifications", "readOnly": True} in c["volumeMounts"]
    assert {"name": "notifications", "secret": {"secretName": "hooks"}} in pod["volumes"]
    plain = find(template(control_plane), "Deployment")["spec"]["template"]["spec"]
    assert not any(a.startswith("--notifications") for a in plain["containers"][0]["args"])


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicas": "two"}, "/replicas"),
        ({"replicaCount": 2}, "replicaCount"),
        ({"rbac": {"scope": "galaxy"}}, "/rbac/scope"),
        ({"rbac": {"scop": "cluster"}}, "scop"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"serviceMonitor": {"enabled": "yes"}}, "/serviceMonitor/enabled"),
        ({"prometheus": {"url": "prometheus:9090"}}, "/prometheus/url"),
        ({"watchNamespace": "Not_A_Namespace"}, "/watchNamespace"),
        ({"notifications": {"secretName": "Hooks!"}}, "/notifications/secretName"),
    ],
)
def test_values_schema_rejects_bad_values(
    control_plane: ControlPlane, tmp_path: Path, values: dict[str, Any], complaint: str
) -> None:
    f = tmp_path / "values.yaml"
    f.write_text(yaml.safe_dump(values))
    res = control_plane.helm("template", RELEASE, str(CHART), "-f", str(f), check=False)
    assert res.returncode != 0, res.stdout[:500]
    assert "values don't meet the specifications of the schema" in res.stderr, res.stderr
    assert complaint in res.stderr, res.stderr


@pytest.mark.parametrize(
    ("sets", "complaint"),
    [
        (("rbac.scope=cluster", "watchNamespace=ml"), "watchNamespace is only used with rbac.scope=namespace"),
        (("leaderElection.renewDeadlineSeconds=15",), "renewDeadlineSeconds must be less than"),
    ],
)
def test_inconsistent_values_are_refused(control_plane: ControlPlane, sets: tuple[str, ...], complaint: str) -> None:
    args = [a for s in sets for a in ("--set", s)]
    res = control_plane.helm("template", RELEASE, str(CHART), *args, check=False)
    assert res.returncode != 0 and complaint in res.stderr, res.stderr


@pytest.mark.parametrize("scope", ["namespace", "cluster"])
def test_rbac_rules_are_exactly_what_the_operator_needs(control_plane: ControlPlane, scope: str) -> None:
    docs = template(control_plane, f"rbac.scope={scope}")
    role = find(
        docs, "ClusterRole" if scope == "cluster" else "Role", "modship-modship" if scope == "cluster" else "modship"
    )
    granted: dict[tuple[str, str], set[str]] = {}
    named: dict[tuple[str, str], list[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                if "resourceNames" in rule:
                    named[(group, resource)] = rule["resourceNames"]
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    crd = ("apiextensions.k8s.io", "customresourcedefinitions")
    if scope == "cluster":  # one CRD, by name, read only (the HTTPRoute schema's mirror support)
        assert granted.pop(crd) == {"get"} and named.pop(crd) == ["httproutes.gateway.networking.k8s.io"]
    assert named == {("", "secrets"): ["modship-router-token"]}
    assert granted == EXPECTED_RULES
    rules = [r for d in docs if d["kind"] in ("Role", "ClusterRole") for r in d["rules"]]
    every = {x for r in rules for k in ("apiGroups", "resources", "verbs") for x in r[k]}
    assert "*" not in every and not {"pods/exec", "pods/attach", "pods/portforward", "nodes"} & every
    secret_rules = [r for r in rules if "secrets" in r["resources"]]  # read one by name; create (write-only)
    assert sorted((r["verbs"], r.get("resourceNames")) for r in secret_rules) == [
        (["create"], None),
        (["get"], ["modship-router-token"]),
    ]


# -- the Grafana dashboard ------------------------------------------------------------------------


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    return exprs


def test_dashboard_configmap(control_plane: ControlPlane, tmp_path: Path) -> None:
    docs = template(control_plane)
    cm = find(docs, "ConfigMap", "modship-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["modship-rollouts.json"])
    assert 36 <= dashboard["schemaVersion"] <= 41 and dashboard["uid"] == "modship-rollouts"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "system"} <= variables.keys()
    assert variables["namespace"]["query"]["query"] == "label_values(modship_rollout_phase, namespace)"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exprs = _exprs(dashboard)
    text = "\n".join(exprs)
    for metric in (*OPERATOR_METRICS, *SERVICE_METRICS, "modship_router_weight"):
        assert metric in text, metric
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Canary weight over time", "Request rate per revision", "Error rate per revision"} <= titles
    assert {"p99 latency per revision", "Analysis verdicts", "Automatic rollbacks"} <= titles
    for expr in exprs:
        assert "$namespace" in expr or "modship_router_weight" in expr, expr
        assert "$system" in expr, expr

    # Every query is valid PromQL once Grafana's variables are substituted (promtool parses it).
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: run `make system-deps` (Debian's prometheus package)"
    subst = {"$namespace": ".*", "$system": ".*", "$__rate_interval": "1m", "$__range": "1h"}
    rules = []
    for i, expr in enumerate(exprs):
        concrete = expr
        for k, v in subst.items():
            concrete = concrete.replace(k, v)
        assert "$" not in concrete, concrete
        rules.append({"record": f"modship:dashboard_query_{i}", "expr": concrete})
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


# -- on the control plane -------------------------------------------------------------------------


def test_chart_installs_with_server_side_apply(control_plane: ControlPlane, installed: Installed) -> None:
    cp, ns = control_plane, installed.namespace
    dep = json.loads(cp.kubectl("get", "deployment", RELEASE, "-n", ns, "-o", "json", "--show-managed-fields").stdout)
    assert dep["status"]["readyReplicas"] == 2  # kwok runs the pods: they passed restricted admission
    applied = {(m["manager"], m["operation"]) for m in dep["metadata"]["managedFields"]}
    assert ("modship-test", "Apply") in applied  # server-side apply, not a client-side patch
    # The CRD serves and validates Rollouts.
    example = yaml.safe_load(ROLLOUT.read_text())
    apply(cp, [example], "--dry-run=server", namespace=ns)
    bad = json.loads(json.dumps(example))
    bad["spec"]["strategy"]["canary"]["steps"].append({"setWeight": 150})
    res = cp.kubectl("apply", "--server-side", "-n", ns, "-f", "-", input=json.dumps(bad), check=False)
    assert res.returncode != 0 and "setWeight" in res.stderr, res.stderr
    # Re-applying the same render is a no-op for server-side apply (no conflicts, nothing to change).
    out = apply(cp, template(cp, "prometheus.url=http://prometheus.monitoring.svc:9090", namespace=ns))
    assert "serverside-applied" in out


def test_rbac_is_proven_for_the_service_account(control_plane: ControlPlane, installed: Installed) -> None:
    cp, ns, sa = control_plane, installed.namespace, installed.service_account
    other = new_namespace(cp, "other")
    try:
        allowed = [
            ("list", "rollouts.modship.dev", ""),
            ("watch", "rollouts.modship.dev", ""),
            ("patch", "rollouts.modship.dev", ""),
            ("patch", "rollouts.modship.dev", "status"),
            ("update", "rollouts.modship.dev", "finalizers"),
            ("list", "pods", ""),
            ("create", "deployments.apps", ""),
            ("patch", "deployments.apps", ""),
            ("create", "services", ""),
            ("patch", "services", ""),
            ("create", "configmaps", ""),
            ("patch", "configmaps", ""),
            ("create", "httproutes.gateway.networking.k8s.io", ""),
            ("patch", "httproutes.gateway.networking.k8s.io", ""),
            ("create", "virtualservices.networking.istio.io", ""),
            ("patch", "virtualservices.networking.istio.io", ""),
            ("create", "ingresses.networking.k8s.io", ""),
            ("patch", "ingresses.networking.k8s.io", ""),
            ("create", "events", ""),
            ("create", "events.events.k8s.io", ""),
            ("get", "pods", "proxy"),
            ("update", "pods", "proxy"),
            ("get", "secrets/modship-router-token", ""),
            ("create", "leases.coordination.k8s.io", ""),
            ("get", f"leases.coordination.k8s.io/{installed.lease}", ""),
            ("update", f"leases.coordination.k8s.io/{installed.lease}", ""),
        ]
        denied = [
            ("get", "secrets", "", ns),  # any Secret but the router token
            ("get", "secrets/some-app-secret", "", ns),
            ("list", "secrets", "", ns),
            ("watch", "secrets", "", ns),
            ("create", "pods", "exec", ns),
            ("get", "pods", "exec", ns),
            ("create", "pods", "", ns),
            ("delete", "rollouts.modship.dev", "", ns),
            ("create", "rollouts.modship.dev", "", ns),
            ("update", "leases.coordination.k8s.io/someone-elses-lease", "", ns),
            ("*", "*", "", ns),
            ("list", "nodes", "", ns),
            ("create", "clusterroles.rbac.authorization.k8s.io", "", ns),
            ("create", "rolebindings.rbac.authorization.k8s.io", "", ns),
            # namespaced: nothing at all in another namespace
            ("list", "rollouts.modship.dev", "", other),
            ("patch", "rollouts.modship.dev", "status", other),
            ("create", "deployments.apps", "", other),
            ("create", "services", "", other),
            ("create", "configmaps", "", other),
            ("create", "events", "", other),
            ("patch", "httproutes.gateway.networking.k8s.io", "", other),
            ("create", "leases.coordination.k8s.io", "", other),
            ("get", "secrets/modship-router-token", "", other),
            ("get", "pods", "proxy", other),
        ]
        wrong = [f"{v} {r} {s}: expected yes" for v, r, s in allowed if not can_i(cp, sa, v, r, ns, s)]
        wrong += [f"{v} {r} {s} in {n}: expected no" for v, r, s, n in denied if can_i(cp, sa, v, r, n, s)]
        assert wrong == []
    finally:
        cp.kubectl("delete", "namespace", other, "--wait=false")


def test_rbac_with_a_real_service_account_token(
    control_plane: ControlPlane, installed: Installed, tmp_path: Path
) -> None:
    """Not impersonation: a token from the TokenRequest API, authenticated by the API server."""
    cp, ns = control_plane, installed.namespace
    token = cp.kubectl("create", "token", installed.sa_name, "-n", ns, "--duration=10m").stdout.strip()
    config = json.loads(cp.kubeconfig.read_text())
    config["users"] = [{"name": "operator", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "operator"
    kubeconfig = tmp_path / "operator.kubeconfig"
    kubeconfig.write_text(json.dumps(config))

    def as_operator(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return cp.kubectl(*args, "-n", ns, kubeconfig=kubeconfig, input=input, check=False)

    whoami = as_operator("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    assert whoami.stdout == installed.service_account, whoami.stderr
    assert as_operator("get", "rollouts.modship.dev").returncode == 0
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": installed.lease},
        "spec": {"holderIdentity": "modship-0", "leaseDurationSeconds": 15},
    }
    created = as_operator("create", "-f", "-", input=json.dumps(lease))
    assert created.returncode == 0, created.stderr
    renewed = as_operator(
        "patch", "lease", installed.lease, "--type=merge", "-p", '{"spec":{"holderIdentity":"modship-1"}}'
    )
    assert renewed.returncode == 0, renewed.stderr
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "router-state"}, "data": {"k": "v"}}
    assert as_operator("apply", "--server-side", "-f", "-", input=json.dumps(cm)).returncode == 0
    assert as_operator("get", "pods").returncode == 0  # listing pods (container states) is allowed, nothing more:
    for forbidden in (("get", "pod", "any"), ("get", "secrets"), ("get", "rollouts.modship.dev", "-A")):
        res = as_operator(*forbidden)
        assert res.returncode != 0 and "forbidden" in res.stderr.lower(), (forbidden, res.stderr)


def test_rbac_cluster_scope(control_plane: ControlPlane, routing_crds: None) -> None:
    cp = control_plane
    install_crds(cp, CRD)
    ns, elsewhere = new_namespace(cp, "modship-cl"), new_namespace(cp, "team")
    sa = f"system:serviceaccount:{ns}:{RELEASE}"
    docs = template(cp, "rbac.scope=cluster", namespace=ns)
    try:
        apply(cp, docs)
        for verb, resource, sub in (
            ("list", "rollouts.modship.dev", ""),
            ("watch", "rollouts.modship.dev", ""),
            ("patch", "rollouts.modship.dev", "status"),
            ("create", "deployments.apps", ""),
            ("patch", "httproutes.gateway.networking.k8s.io", ""),
            ("create", "events", ""),
        ):
            assert can_i(cp, sa, verb, resource, elsewhere, sub), (verb, resource, sub)
        assert can_i(cp, sa, "update", f"leases.coordination.k8s.io/{RELEASE}-leader", ns)
        for verb, resource, sub, where in (
            ("get", "secrets", "", elsewhere),
            ("list", "secrets", "", ns),
            ("create", "pods", "exec", elsewhere),
            ("create", "leases.coordination.k8s.io", "", elsewhere),
            ("delete", "rollouts.modship.dev", "", elsewhere),
        ):
            assert not can_i(cp, sa, verb, resource, where, sub), (verb, resource, sub, where)
    finally:
        cp.kubectl("delete", "clusterrole,clusterrolebinding", f"{ns}-{RELEASE}", "--ignore-not-found")
        cp.kubectl("delete", "namespace", ns, elsewhere, "--wait=false")


def test_service_monitor_applies_with_a_minimal_crd(
    control_plane: ControlPlane, installed: Installed, tmp_path: Path
) -> None:
    crd = tmp_path / "servicemonitors.yaml"
    crd.write_text(yaml.safe_dump(SERVICE_MONITOR_CRD))
    install_crds(control_plane, crd)
    docs = template(control_plane, "serviceMonitor.enabled=true", namespace=installed.namespace)
    out = apply(control_plane, docs, "--dry-run=server")
    assert re.search(r"servicemonitor\.monitoring\.coreos\.com/modship serverside-applied", out), out


def test_helm_install_and_uninstall(control_plane: ControlPlane, routing_crds: None) -> None:
    cp = control_plane
    owned = "deployment,service,configmap,role,rolebinding,serviceaccount"
    ns = f"modship-helm-{uuid.uuid4().hex[:6]}"
    try:
        cp.helm(
            "install",
            "ship",
            str(CHART),
            "-n",
            ns,
            "--create-namespace",
            "--wait",
            f"--timeout={WAIT}",
            "--set",
            "replicas=1",
        )
        status = json.loads(cp.helm("status", "ship", "-n", ns, "-o", "json").stdout)
        assert status["info"]["status"] == "deployed"
        assert "kubectl -n " + ns + " rollout status deployment/ship-modship" in status["info"]["notes"]
        cp.helm("uninstall", "ship", "-n", ns, "--wait", f"--timeout={WAIT}")
        assert cp.kubectl("get", owned, "-n", ns, "-l", "app.kubernetes.io/instance=ship", "-o", "name").stdout == ""
        assert cp.kubectl("get", "crd", "rollouts.modship.dev", "-o", "name").returncode == 0  # Helm keeps CRDs
    finally:
        cp.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")


# -- GitOps manifests against the real API server -------------------------------------------------

_app = typer.Typer()
_app.command()(cli_gitops.render)


@_app.callback()
def _root() -> None:
    """One command: render."""


def render(out: Path, *args: str) -> None:
    res = CliRunner().invoke(_app, ["render", *args, "--out", str(out)])
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"


@pytest.mark.parametrize("traffic", ["none", "gateway-api", "istio", "nginx"])
def test_rendered_gitops_manifests_pass_a_server_side_dry_run(
    control_plane: ControlPlane, installed: Installed, tmp_path: Path, traffic: str
) -> None:
    ns = installed.namespace
    args = [str(SYSTEM), "--rollout", str(ROLLOUT), "--image", "registry.example.com/topic-classifier"]
    args += ["--namespace", ns, "--traffic", traffic, "--host", "topics.example.com"]
    if traffic == "gateway-api":
        args += ["--gateway", "infra/public"]
    render(tmp_path, *args)
    res = control_plane.kubectl(
        "apply", "-k", str(tmp_path), "--server-side", "--dry-run=server", "-o", "json", check=False
    )
    assert res.returncode == 0, res.stderr
    items = json.loads(res.stdout)
    items = items.get("items", [items])
    by_kind = {i["kind"]: i for i in items}
    routers = {"gateway-api": "HTTPRoute", "istio": "VirtualService", "nginx": "Ingress"}
    expected = {"Rollout", "ConfigMap"} | ({routers[traffic]} if traffic in routers else set())
    assert set(by_kind) == expected
    cr = by_kind["Rollout"]
    assert cr["metadata"]["namespace"] == ns
    # Nothing was pruned: the server kept every field render wrote (strict field validation is on, too).
    written = yaml.safe_load((tmp_path / "rollout.yaml").read_text())
    assert cr["spec"] == written["spec"]


def test_drift_against_the_live_rollout(control_plane: ControlPlane, installed: Installed, tmp_path: Path) -> None:
    cp, ns = control_plane, installed.namespace
    new, old = "r0123456789ab", "r111111111111"
    render(
        tmp_path,
        str(ROLLOUT),
        "--image",
        "registry.example.com/topic-classifier",
        "--namespace",
        ns,
        "--traffic",
        "gateway-api",
    )
    gitops.promote_gitops(tmp_path, "topic-classifier", new, ["text-encoder@2"])
    cp.kubectl("apply", "--server-side", "-f", str(tmp_path / "rollout.yaml"))

    def live() -> dict[str, Any]:
        got: dict[str, Any] = json.loads(
            cp.kubectl("get", "rollouts.modship.dev", "topic-classifier", "-n", ns, "-o", "json").stdout
        )
        return got

    def set_status(**status: Any) -> None:
        patch = json.dumps({"status": status})
        cp.kubectl(
            "patch",
            "rollouts.modship.dev",
            "topic-classifier",
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            patch,
        )

    set_status(phase="Promoted", stableRevision=new, reason="Completed")
    assert gitops.drift(tmp_path, live()) == []  # server-side fields (uid, managedFields...) are not drift
    set_status(
        phase="Aborted",
        stableRevision=old,
        canaryRevision=new,
        reason="AnalysisFailed",
        message="step 4 analysis failed",
    )
    cp.kubectl(
        "patch", "rollouts.modship.dev", "topic-classifier", "-n", ns, "--type=merge", "-p", '{"spec":{"paused":true}}'
    )
    assert gitops.drift(tmp_path, live()) == [
        "spec.paused: Git has (unset), the cluster has true",
        f"Git asks for {new}, the cluster runs {old} after an automatic rollback "
        "(reason AnalysisFailed: step 4 analysis failed)",
    ]
