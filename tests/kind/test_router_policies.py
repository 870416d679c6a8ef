"""What modship's router does in a cluster as on one machine, on real pods (``trafficRouting.modship``):

- **sticky assignment**: with ``policies.stickyHeader``, every request of one user reaches the same
  revision, and users spread over both;
- **zero-loss fallback**: a canary answering 500 to every request costs the clients nothing: the
  router replays each on stable (``x-modship-routed: canary-fallback``);
- **mirroring with answer comparison**: a canary that gets only mirrored traffic and predicts other
  labels than stable is rolled back by the builtin ``disagreement`` check, and no client ever sees
  its answers.

The operator runs on the host against the kind cluster (as in test_modship_traffic.py); the router
runs in the cluster from the operator image. Each revision is a small JSON server on the operator
image (Python's standard library; its answer, label and status, baked into its tag), so what
answered is visible in each body.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.kube_rollouts import KubeRollouts
from controller.apply.kube_control import KubeControl
from controller.spec.control import Actor, Command
from tests.k8s.operator_support import OperatorProcess
from tests.kind.test_modship_traffic import Client, start
from tests.kind.test_router_in_cluster import operator_image
from tests.support.kindenv import KindCluster, kind_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.kind]

NS = "modship-policies"
NAME = "mp"
REPO = "modship.local/kind-policy"
NODE_PORT = 30085
STABLE, FAILING, DISAGREEING = "r" + "a" * 12, "r" + "b" * 12, "r" + "c" * 12
ME = Actor(user="kind test", reason="router policies")

SERVER = """\
import json, os, socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LABEL, STATUS, POD = os.environ["POLICY_LABEL"], int(os.environ["POLICY_STATUS"]), socket.gethostname()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def send(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # /readyz, /livez
        self.send(200, {"status": "ok", "pod": POD})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        if STATUS >= 400:
            self.send(STATUS, {"error": "failing on purpose", "pod": POD})
        else:
            self.send(200, {"prediction": {"label": LABEL, "confidence": 0.9}, "pod": POD})

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""


def revision_image(base: str, revision: str, label: str, status: int, work: Path) -> str:
    """``REPO:revision``: the JSON server on ``base``, answering ``label`` with ``status``."""
    ctx = work / f"img-{revision}"
    ctx.mkdir()
    (ctx / "server.py").write_text(SERVER)
    (ctx / "Dockerfile").write_text(
        f"FROM {base}\nCOPY server.py /srv/server.py\n"
        f"ENV POLICY_LABEL={label} POLICY_STATUS={status}\n"
        'CMD ["python", "/srv/server.py"]\n'
    )
    tag = f"{REPO}:{revision}"
    proc = subprocess.run(
        ["docker", "build", "-q", "-t", tag, str(ctx)], env=kind_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tag


def rollout(revision: str, steps: list[dict[str, Any]], checks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "system": NAME,
        "revision": revision,
        "workload": {"image": REPO, "replicas": 1, "port": 8080},
        "trafficRouting": {"modship": {"replicas": 1}},
        "policies": {"stickyHeader": "x-user", "fallbackToStable": True},
        "strategy": {"canary": {"steps": steps}},
    }
    if checks:
        spec["analysis"] = {"checks": checks}
    return {
        "apiVersion": "modship.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": spec,
    }


def status(kc: KindCluster) -> dict[str, Any]:
    return dict(kc.get_json("-n", NS, "rollouts.modship.dev", NAME).get("status") or {})


def wait_phase(kc: KindCluster, phase: str, *, revision: str | None = None, timeout: float = 240) -> dict[str, Any]:
    def done() -> bool:
        s = status(kc)
        return s.get("phase") == phase and (revision is None or revision in json.dumps(s))

    wait_for(f"{NAME} {phase}", done, timeout, detail=lambda: json.dumps(status(kc))[:1500])
    return status(kc)


def predict(client: Client, user: str) -> tuple[str, dict[str, Any]]:
    routed, body = client.one({"x-user": user, "content-type": "application/json"})
    return routed, json.loads(body)


def test_sticky_users_zero_loss_fallback_and_mirrored_disagreement_on_real_pods(
    kind_cluster: KindCluster, tmp_path: Path
) -> None:
    kc = kind_cluster
    base = operator_image()
    kc.load(base)
    for revision, label, code in ((STABLE, "a", 200), (FAILING, "a", 500), (DISAGREEING, "b", 200)):
        kc.load(revision_image(base, revision, label, code, tmp_path))
    steps = [{"setWeight": 50}, {"pause": {}}]
    start(kc, NS, NAME, NODE_PORT, rollout(STABLE, steps))
    op = OperatorProcess(kc.kubeconfig, NS, tmp_path, identity="kind-policies", env={"MODSHIP_ROUTER_IMAGE": base})
    client = Client(f"http://127.0.0.1:{kc.host_port(NODE_PORT)}")
    rollouts = KubeRollouts(kubeconfig=str(kc.kubeconfig), namespace=NS)
    control = KubeControl(rollouts)
    try:
        wait_phase(kc, "Idle", revision=STABLE)
        client.wait_serving(detail=lambda: op.log()[-3000:])
        client.start()

        # -- a canary that answers 500 to everything, at 50 %, sticky by x-user --------------------
        kc.kubectl("apply", "-f", "-", stdin=json.dumps(rollout(FAILING, steps)))
        wait_phase(kc, "Paused", revision=FAILING)
        seen: dict[str, set[str]] = {}
        for i in range(24):
            for _ in range(4):
                routed, doc = predict(client, f"user-{i}")
                assert doc["prediction"]["label"] == "a", doc  # never the canary's 500: replayed on stable
                seen.setdefault(f"user-{i}", set()).add(routed)
        assert all(len(r) == 1 for r in seen.values()), seen  # every user sticks to one revision
        spread = Counter(next(iter(r)) for r in seen.values())
        assert set(spread) == {"stable", "canary-fallback"}, spread  # users spread over both (P(not) = 2^-23)
        control.command(NAME, Command.ABORT, actor=ME)
        wait_phase(kc, "Aborted")

        # -- a canary on mirrored traffic only, predicting other labels: disagreement rolls it back --
        checks = [
            {
                "name": "agrees",
                "provider": "builtin",
                "metric": "disagreement",
                "threshold": {"max": 0.2},
                "window": "10s",
                "interval": "1s",
                "count": 5,
                "minSamples": 5,
            }
        ]
        mirrored: list[dict[str, Any]] = [
            {"setMirror": {"percent": 100}},
            {"analysis": {"checks": ["agrees"]}},
            {"setWeight": 50},
        ]
        kc.kubectl("apply", "-f", "-", stdin=json.dumps(rollout(DISAGREEING, mirrored, checks)))
        s = wait_phase(kc, "Aborted", revision=DISAGREEING, timeout=300)
        assert "agrees" in json.dumps(s) and s.get("weight", 0) == 0, s
    finally:
        client.stop.set()
        rollouts.close()
        op.stop()
        kc.kubectl("delete", "namespace", NS, "--wait=false", check=False)
    assert client.failures == [], client.failures[:10]
    labels = Counter(json.loads(body)["prediction"]["label"] for _, body in client.answers)
    assert set(labels) == {"a"} and labels["a"] > 100, labels  # no client saw the mirrored canary's "b"
