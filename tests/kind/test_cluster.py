"""Smoke test of the kind cluster: real pods, real containerd, a request through a NodePort."""

from __future__ import annotations

import urllib.request

import pytest

from tests.support.kindenv import KindCluster, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.kind]

SMOKE_IMAGE = "modship.local/kind-smoke:1"
SMOKE = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: smoke, namespace: default}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: smoke}}}}
  template:
    metadata: {{labels: {{app: smoke}}}}
    spec:
      containers:
      - name: smoke
        image: {SMOKE_IMAGE}
        imagePullPolicy: Never
        ports: [{{containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
        securityContext: {{runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}}
---
apiVersion: v1
kind: Service
metadata: {{name: smoke, namespace: default}}
spec:
  type: NodePort
  selector: {{app: smoke}}
  ports: [{{port: 80, targetPort: 8080, nodePort: 30082}}]
"""


def test_node_is_ready_with_coredns_and_kube_proxy_running(kind_cluster: KindCluster) -> None:
    node = kind_cluster.get_json("nodes")["items"][0]
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True"
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.34.4"
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    pods = kind_cluster.get_json("-n", "kube-system", "pods")["items"]
    phases = {p["metadata"]["name"]: p["status"]["phase"] for p in pods}
    assert any(n.startswith("coredns-") and ph == "Running" for n, ph in phases.items()), phases
    assert any(n.startswith("kube-proxy-") and ph == "Running" for n, ph in phases.items()), phases
    corefile = kind_cluster.get_json("-n", "kube-system", "configmap", "coredns")["data"]["Corefile"]
    assert "forward" not in corefile


def test_the_node_holds_every_image_kubeadm_uses_so_nothing_is_pulled(kind_cluster: KindCluster) -> None:
    wanted = set(
        kind_cluster.node_exec("kubeadm", "config", "images", "list", "--config", "/kind/kubeadm.conf").split()
    )
    present = set(kind_cluster.node_exec("ctr", "-n", "k8s.io", "images", "ls", "-q").split())
    assert wanted, "kubeadm listed no images"
    assert wanted <= present, f"missing from the node image: {sorted(wanted - present)}"
    events = kind_cluster.get_json("-n", "kube-system", "events")["items"]
    assert not [e["message"] for e in events if e.get("reason") in ("Pulling", "Failed", "ErrImagePull")]


def test_a_local_image_answers_through_a_nodeport(kind_cluster: KindCluster) -> None:
    kind_cluster.load(SMOKE_IMAGE)
    kind_cluster.kubectl("apply", "-f", "-", stdin=SMOKE)
    kind_cluster.rollout("default", "smoke")
    url = f"http://127.0.0.1:{kind_cluster.host_port(30082)}/"
    answers: list[str] = []

    def answers_from_the_pod() -> bool:
        with urllib.request.urlopen(url, timeout=2) as resp:
            answers.append(resp.read().decode())
        return True

    wait_for(f"{url} to answer", answers_from_the_pod, 60)
    pod = kind_cluster.get_json("pods", "-l", "app=smoke")["items"][0]["metadata"]["name"]
    assert answers[-1] == f"modship-kind-smoke {pod}\n"


def test_a_pod_resolves_service_names_through_coredns(kind_cluster: KindCluster) -> None:
    kind_cluster.load(SMOKE_IMAGE)
    kind_cluster.kubectl(
        "run", "dns-check", "--restart=Never", f"--image={SMOKE_IMAGE}", "--image-pull-policy=Never",
        "--command", "--", "/smoke", "lookup", "kubernetes.default.svc.cluster.local",
    )  # fmt: skip
    phase: list[str] = []

    def finished() -> bool:
        phase.append(kind_cluster.get_json("pod", "dns-check")["status"].get("phase", ""))
        return phase[-1] in ("Succeeded", "Failed")

    wait_for("the dns-check pod to finish", finished, 120)
    logs = kind_cluster.kubectl("logs", "dns-check").stdout
    kind_cluster.kubectl("delete", "pod", "dns-check", "--wait=false")
    assert (phase[-1], logs.strip()) == ("Succeeded", "10.96.0.1")
