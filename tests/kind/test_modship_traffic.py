"""``trafficRouting.modship`` on real pods: the operator (on the host, against the kind cluster's API
server) deploys modship's router from the operator image, configures its pods through the API
server's pod proxy, and a canary gets real requests through it: a weighted split, a header route,
builtin analysis on the routers' telemetry, promotion, with no failed client request.

Revisions are the smoke server (tools/kind/smoke: it answers every path, probes included, with its
pod's name) under one tag per revision, so which pod answered is visible in the body.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.kube_rollouts import KubeRollouts
from controller.apply.kube_control import KubeControl
from controller.spec.control import Actor, Command
from tests.k8s.operator_support import CRD, OperatorProcess
from tests.kind.test_router_in_cluster import SMOKE_IMAGE, operator_image
from tests.support.kindenv import KindCluster, kind_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.kind]

NS = "modship-traffic"
NAME = "mt"
REPO = "modship.local/kind-smoke"
NODE_PORT = 30500
R1, R2 = "r" + "1" * 12, "r" + "2" * 12  # revision ids as `system lock` makes them


def rollout(revision: str) -> dict[str, Any]:
    check = {
        "name": "errors",
        "provider": "builtin",
        "metric": "errorRate",
        "threshold": {"max": 0.05},
        "window": "5s",
        "interval": "1s",
        "count": 3,
        "minSamples": 3,
    }
    steps = [
        {"setWeight": 50},
        {"setHeaderRoute": {"name": "x-canary", "value": "1"}},
        {"pause": {}},
        {"analysis": {"checks": ["errors"]}},
    ]
    return {
        "apiVersion": "modship.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "system": NAME,
            "revision": revision,
            "workload": {"image": REPO, "replicas": 1, "port": 8080},
            "trafficRouting": {"modship": {"replicas": 1}},
            "analysis": {"checks": [check]},
            "strategy": {"canary": {"steps": steps}},
        },
    }


class Client(threading.Thread):
    """Steady requests through the router's NodePort: who answered, and every failure."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.answers: list[tuple[str, str]] = []  # (x-modship-routed, body)
        self.failures: list[str] = []
        self.stop = threading.Event()

    def one(self, headers: dict[str, str] | None = None) -> tuple[str, str]:
        req = urllib.request.Request(f"{self.url}/predict", data=b"{}", headers=headers or {}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.headers.get("x-modship-routed", ""), resp.read().decode()

    def wait_serving(self, detail: Callable[[], str], timeout: float = 180) -> None:
        """Until the router answers from stable (its pods Ready, its configuration applied)."""

        def routed_stable() -> bool:
            try:
                return self.one()[0] == "stable"
            except (urllib.error.URLError, OSError):
                return False

        wait_for("the router serving stable", routed_stable, timeout, detail=detail)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.answers.append(self.one())
            except (urllib.error.URLError, OSError) as exc:
                self.failures.append(f"{time.strftime('%X')} {exc}")
            time.sleep(0.02)


def start(kc: KindCluster, ns: str, system: str, node_port: int, first: dict[str, Any]) -> None:
    """The Rollout CRD, namespace ``ns``, the test's way in (a NodePort in front of ``system``'s router
    pods: ``S`` itself is ClusterIP) and the ``first`` Rollout."""
    kc.kubectl("apply", "--server-side", "--force-conflicts", f"-f={CRD}")
    kc.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/rollouts.modship.dev")
    kc.kubectl("create", "namespace", ns)
    way_in = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{system}-nodeport", "namespace": ns},
        "spec": {
            "type": "NodePort",
            "selector": {"modship.dev/system": system, "modship.dev/component": "router"},
            "ports": [{"port": 8080, "targetPort": "http", "nodePort": node_port}],
        },
    }
    kc.kubectl("apply", "-f", "-", stdin=json.dumps(way_in) + "\n---\n" + json.dumps(first))


def status(kc: KindCluster) -> dict[str, Any]:
    doc = kc.get_json("-n", NS, "rollouts.modship.dev", NAME)
    return dict(doc.get("status") or {})


def wait_phase(kc: KindCluster, phase: str, stable: str | None = None, timeout: float = 240) -> dict[str, Any]:
    def done() -> bool:
        s = status(kc)
        return s.get("phase") == phase and (stable is None or s.get("stableRevision") == stable)

    wait_for(f"{NAME} {phase}", done, timeout, detail=lambda: json.dumps(status(kc))[:1500])
    return status(kc)


def test_the_operator_routes_a_canary_through_modships_router_in_the_cluster(
    kind_cluster: KindCluster, tmp_path: Path
) -> None:
    kc = kind_cluster
    image = operator_image()
    kc.load(image)
    for rev in (R1, R2):
        subprocess.run(["docker", "tag", SMOKE_IMAGE, f"{REPO}:{rev}"], env=kind_env(), check=True, timeout=60)
        kc.load(f"{REPO}:{rev}")
    start(kc, NS, NAME, NODE_PORT, rollout(R1))
    op = OperatorProcess(kc.kubeconfig, NS, tmp_path, identity="kind", env={"MODSHIP_ROUTER_IMAGE": image})
    client = Client(f"http://127.0.0.1:{kc.host_port(NODE_PORT)}")
    try:
        wait_phase(kc, "Idle", stable=R1)
        client.wait_serving(detail=lambda: op.log()[-3000:])
        client.start()

        kc.kubectl(
            "-n",
            NS,
            "patch",
            "rollouts.modship.dev",
            NAME,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"revision": R2}}),
        )
        s = wait_phase(kc, "Paused")
        assert s["weight"] == 50
        sample = [client.one() for _ in range(120)]
        counts = Counter(routed for routed, _ in sample)
        assert 30 <= counts["canary"] <= 90, counts  # 50 % +- 5 standard deviations
        for routed, body in sample:
            assert body.split()[1].startswith(f"{NAME}-{R2 if routed == 'canary' else R1}-"), (routed, body)
        assert {client.one({"x-canary": "1"})[0] for _ in range(10)} == {"canary"}

        rollouts = KubeRollouts(kubeconfig=str(kc.kubeconfig), namespace=NS)
        KubeControl(rollouts).command(NAME, Command.RESUME, actor=Actor(user="kind test", reason="resume"))
        rollouts.close()
        s = wait_phase(kc, "Promoted", stable=R2)
        measured = json.dumps(s)
        assert "errors" in measured  # the builtin check ran on the routers' telemetry
        wait_for("stable r2 served", lambda: client.one()[1].split()[1].startswith(f"{NAME}-{R2}-"), 60)
    finally:
        client.stop.set()
        op.stop()
    assert client.failures == [], client.failures[:10]
    assert len(client.answers) > 100
    token = base64.b64decode(kc.get_json("-n", NS, "secret", "modship-router-token")["data"]["token"]).decode()
    assert token not in op.log() and token not in json.dumps(status(kc))
