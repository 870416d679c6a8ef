"""The operator image, sent with `kind load`, runs modship's router as a Deployment in front of two
revision Services of real pods; requests reach it through a NodePort on 127.0.0.1.

The image comes from tools/images/build.sh (the operator image, ghcr.io/modship/modship:<appVersion>).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import urllib.error
import urllib.request

import pytest

from controller.spec.routing import RouterConfig
from tests.support.kindenv import REPO_ROOT, KindCluster, kind_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.kind]

NS = "router-smoke"
SMOKE_IMAGE = "modship.local/kind-smoke:1"
IMAGES_BUILD = REPO_ROOT / "tools" / "images" / "build.sh"
TOKEN = secrets.token_hex(16)


def operator_image() -> str:
    """``$MODSHIP_OPERATOR_IMAGE``, or build it (docker's cache makes a rebuild seconds) and return its tag."""
    if os.environ.get("MODSHIP_OPERATOR_IMAGE"):
        return os.environ["MODSHIP_OPERATOR_IMAGE"]
    if not IMAGES_BUILD.exists():
        pytest.skip(f"{IMAGES_BUILD.relative_to(REPO_ROOT)} (the operator image's build) is not on this branch")
    proc = subprocess.run(["bash", str(IMAGES_BUILD)], env=kind_env(), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def revision(name: str) -> str:
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {NS}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: smoke
        image: {SMOKE_IMAGE}
        imagePullPolicy: Never
        readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {NS}}}
spec:
  type: NodePort
  selector: {{app: {name}}}
  ports: [{{port: 80, targetPort: 8080{", nodePort: 30081" if name == "stable" else ""}}}]
"""


def router(image: str) -> str:
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: router, namespace: {NS}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: router}}}}
  template:
    metadata: {{labels: {{app: router}}}}
    spec:
      securityContext: {{runAsNonRoot: true, runAsUser: 65532}}
      containers:
      - name: router
        image: {image}
        imagePullPolicy: Never
        command: [python, -m, controller.entrypoints.router, --host, 0.0.0.0, --port, "8080", --system, smoke,
                  --state, /tmp/router-state.json]
        env: [{{name: MODSHIP_ROUTER_TOKEN, value: {TOKEN}}}]
        readinessProbe: {{httpGet: {{path: /-/modship/livez, port: 8080}}, periodSeconds: 1}}
        securityContext: {{readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}}
        volumeMounts: [{{name: tmp, mountPath: /tmp}}]
      volumes: [{{name: tmp, emptyDir: {{}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: router, namespace: {NS}}}
spec:
  type: NodePort
  selector: {{app: router}}
  ports: [{{port: 80, targetPort: 8080, nodePort: 30080}}]
"""


def get(url: str, headers: dict[str, str] | None = None) -> str:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return str(resp.read().decode())


def put_json(url: str, doc: dict[str, object], token: str | None) -> int:
    headers = {"content-type": "application/json", **({"x-modship-token": token} if token else {})}
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), method="PUT", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_the_router_from_the_operator_image_routes_to_revision_pods(kind_cluster: KindCluster) -> None:
    image = operator_image()
    kind_cluster.load(image)
    kind_cluster.load(SMOKE_IMAGE)
    kind_cluster.kubectl("create", "namespace", NS)
    manifests = revision("stable") + "---" + revision("canary") + "---" + router(image)
    kind_cluster.kubectl("apply", "-f", "-", stdin=manifests)
    for name in ("stable", "canary", "router"):
        kind_cluster.rollout(NS, name)
    pod = {
        name: kind_cluster.get_json("-n", NS, "pods", "-l", f"app={name}")["items"][0]["metadata"]["name"]
        for name in ("stable", "canary")
    }
    base = f"http://127.0.0.1:{kind_cluster.host_port(30080)}"
    direct = f"http://127.0.0.1:{kind_cluster.host_port(30081)}/"

    config = RouterConfig.model_validate(
        {
            "system": "smoke",
            "generation": 1,
            "stable": {"revision": "r1", "url": f"http://stable.{NS}.svc.cluster.local"},
            "canary": {"revision": "r2", "url": f"http://canary.{NS}.svc.cluster.local"},
            "weight": 0,
            "headerRoute": {"name": "x-modship-canary"},
        }
    )
    wait_for("the router's livez", lambda: get(f"{base}/-/modship/livez") is not None, 60)
    assert put_json(f"{base}/-/modship/config", config.wire(), None) == 401  # the admin API needs the token
    assert put_json(f"{base}/-/modship/config", config.wire(), TOKEN) == 200
    wait_for("the router's readyz", lambda: get(f"{base}/-/modship/readyz") is not None, 30)

    # the NodePort straight to stable: kube-proxy may still be programming it (a reset, once, in CI)
    wait_for("the stable Service's NodePort", lambda: get(direct) is not None, 30)
    assert get(direct) == f"modship-kind-smoke {pod['stable']}\n"
    assert [get(f"{base}/") for _ in range(5)] == [f"modship-kind-smoke {pod['stable']}\n"] * 5
    assert get(f"{base}/", {"x-modship-canary": "1"}) == f"modship-kind-smoke {pod['canary']}\n"
    health = json.loads(get(f"{base}/-/modship/healthz", {"x-modship-token": TOKEN}))
    assert {role: up["reachable"] for role, up in health["upstreams"].items()} == {"stable": True, "canary": True}
