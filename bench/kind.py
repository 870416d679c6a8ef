"""(kind) The canary path on a cluster with real pods, beside the local runtime, in one run.

Three figures, each beside its local-runtime twin measured in the same invocation
(``bench/rollback.py`` is run as it is, not duplicated):

1. seconds from a promotion to the canary's first answer through the router: on kind, the
   Control port's ``promote`` of a built revision (what ``modship promote`` does on Kubernetes,
   ``KubeControl``), then the operator's Deployment, the pod's start and readiness, and the router
   pods' new configuration; locally ``modship promote`` (which starts a ``bentoml serve``);
2. a canary that starts failing after a healthy warm-up: seconds from its first failure (the first
   answer the router had to retry on stable, ``canary-fallback``) to 100 % stable (the router's
   configuration has no canary, polled every 20 ms through the router's NodePort), and the client
   requests that failed meanwhile (until a second after that), at 40 requests/s, with the builtin
   ``errorRate`` check on the router pods' telemetry every 1 s (window 2 s, minSamples 3). Goal
   <= 5 s and 0 failed;
3. the in-cluster modship router against the stable revision's Service called directly: both through
   a NodePort published on 127.0.0.1 (30080: the router pods, 30081: the stable revision's pods),
   the same pods behind both, the same wrk client, interleaved runs (``load.side_by_side``; the
   connection counts are ``--connections``, at most 3 rounds). Goal: throughput >= 0.9x, added
   p50 <= 1 ms.

Revisions are the smoke server (``tools/kind/smoke``, built here from source into a 6 MB image) with
``SMOKE_DELAY=8ms`` (a model's service time, about the example topic classifier's median, spent
sleeping, not on CPU) and, for the canaries, ``SMOKE_FAIL_AFTER=12s`` (500s after that, probes
excepted, so the pod stays Ready and only the analysis can stop it). Each failing canary is a new
revision (the warm-up counts from its process's start).

The operator runs on the host against the kind cluster (as ``tests/kind/test_modship_traffic.py``
does); the router pods run the operator image (``tools/images/build.sh``, tagged
``modship.local/modship:bench`` so the router is this checkout's). The node image comes from
``tools/kind/build.sh`` (cached); the cluster is created for the run and deleted after it. CPU per
request is read from ``/proc`` for the pods' processes (found by their pod's cgroup); "other
programs" then still holds the node's share of relaying (docker-proxy for the published ports,
containerd, the control plane).

Without a docker daemon (``make docker-daemon``) the benchmark is skipped with that message.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench import load, results, rollback, setup
from controller.adapters.kube_rollouts import KubeRollouts
from controller.apply.kube_control import KubeControl
from controller.spec.control import Actor, PromoteRequest
from tests.k8s.operator_support import CRD, OperatorProcess
from tests.support.k8senv import REPO_ROOT
from tests.support.kindenv import DOCKER_HOST, KindCluster, build_node_image, cache_root, kind_env, wait_for
from tests.support.services import wait_until

NS, NAME = "modship-bench", "kb"
REPO = "modship.local/kind-bench"  # revision images: REPO:<revision>
STABLE = "r" + "a" * 12
ROUTER_PORT, DIRECT_PORT = 30080, 30081  # NodePorts kindenv publishes on 127.0.0.1
SMOKE_SRC = REPO_ROOT / "tools" / "kind" / "smoke"
IMAGES_BUILD = REPO_ROOT / "tools" / "images" / "build.sh"
OPERATOR_TAG = "modship.local/modship:bench"
DELAY = "8ms"
FAIL_AFTER_S = 12.0
RUNS = 3  # failing canaries, and at most this many rounds of router vs direct (wall time <= ~6 min)
DIRECT, ROUTER = "stable Service direct", "modship router (in cluster)"
TITLE = "kind: promotion, rollback and router cost on real pods, beside the local runtime"


def docker_missing() -> str | None:
    """Why the kind part cannot run here, or None."""
    if shutil.which("docker") is None:
        return "docker is not installed (make docker-daemon)"
    proc = subprocess.run(["docker", "info"], env=kind_env(), capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["no answer"])[-1]
        return f"no docker daemon at {kind_env().get('DOCKER_HOST', DOCKER_HOST)} ({why}): run make docker-daemon"
    return None


def _docker(*args: str, stdin: bytes | None = None, timeout: float = 300) -> str:
    proc = subprocess.run(["docker", *args], env=kind_env(), input=stdin, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])}: {proc.stderr.decode(errors='replace').strip()[-1500:]}")
    return proc.stdout.decode()


def smoke_images(fail_after: float) -> tuple[str, str]:
    """The smoke server, built from source (cached by its hash), as a healthy and a failing image."""
    h = hashlib.sha256(b"".join((SMOKE_SRC / f).read_bytes() for f in ("go.mod", "main.go"))).hexdigest()[:12]
    healthy, failing = f"{REPO}-smoke:{h}", f"{REPO}-smoke:{h}-fails-{fail_after:g}s"
    binary = cache_root() / "kind-bench" / f"smoke-{h}"
    if not binary.exists():
        if shutil.which("go") is None:
            raise RuntimeError("go not found: the smoke server is built from tools/kind/smoke")
        binary.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": ""}
        cmd = ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", f"{binary}.tmp", "."]
        proc = subprocess.run(cmd, cwd=SMOKE_SRC, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"go build of tools/kind/smoke failed: {proc.stderr.strip()[-1500:]}")
        Path(f"{binary}.tmp").rename(binary)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tar.gettarinfo(str(binary), arcname="smoke")
        info.mode, info.uid, info.gid = 0o755, 0, 0
        with binary.open("rb") as f:
            tar.addfile(info, f)
    for tag, extra in ((healthy, []), (failing, ["--change", f"ENV SMOKE_FAIL_AFTER={fail_after:g}s"])):
        changes = ["--change", "USER 65532:65532", "--change", 'ENTRYPOINT ["/smoke"]', *extra]
        if subprocess.run(["docker", "image", "inspect", tag], env=kind_env(), capture_output=True).returncode:
            _docker("import", *changes, "-", tag, stdin=buf.getvalue())
    return healthy, failing


def operator_image() -> str:
    """``$MODSHIP_OPERATOR_IMAGE``, or this checkout's operator image (docker's cache: seconds)."""
    if os.environ.get("MODSHIP_OPERATOR_IMAGE"):
        return os.environ["MODSHIP_OPERATOR_IMAGE"]
    proc = subprocess.run(
        ["bash", str(IMAGES_BUILD), OPERATOR_TAG], env=kind_env(), capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        raise RuntimeError(f"tools/images/build.sh failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


def rollout(revision: str) -> dict[str, Any]:
    """bench/rollback.py's Rollout (50 %, pause, errorRate every 1 s from step 0) on the cluster."""
    doc = rollback.rollout_doc(NAME)
    doc["metadata"]["namespace"] = NS
    doc["spec"]["analysis"]["checks"][0]["provider"] = "builtin"
    doc["spec"] |= {
        "revision": revision,
        "workload": {"image": REPO, "replicas": 1, "port": 8080, "env": {"SMOKE_DELAY": DELAY}},
        "trafficRouting": {"modship": {"replicas": 1}},
    }
    return doc


def node_port(name: str, port: int, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "type": "NodePort",
            "selector": selector,
            "ports": [{"port": 8080, "targetPort": "http", "nodePort": port}],
        },
    }


def pod_pids(kc: KindCluster, selector: str) -> list[int]:
    """Host pids of the pods' processes (their cgroup names the pod's uid), pause containers left out."""
    uids = [p["metadata"]["uid"] for p in kc.get_json("-n", NS, "pods", "-l", selector)["items"]]
    keys = [u for uid in uids for u in (uid, uid.replace("-", "_"))]
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cgroup = Path(entry.path, "cgroup").read_text()
            cmdline = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        if any(k in cgroup for k in keys) and not cmdline.startswith(b"/pause"):
            pids.append(int(entry.name))
    return sorted(pids)


class Cluster:
    """The bench's objects in a kind cluster and the operator on the host, driven by revision."""

    def __init__(self, kc: KindCluster, scratch: Path, *, router_port: int, direct_port: int) -> None:
        self.kc, self.scratch = kc, scratch
        self.router_url = f"http://127.0.0.1:{kc.host_port(router_port)}"
        self.direct_url = f"http://127.0.0.1:{kc.host_port(direct_port)}"
        self.router_port, self.direct_port = router_port, direct_port
        self.op: OperatorProcess | None = None
        self.rollouts: KubeRollouts | None = None

    def status(self) -> dict[str, Any]:
        return dict(self.kc.get_json("-n", NS, "rollouts.modship.dev", NAME).get("status") or {})

    def wait_phase(self, phase: str, stable: str, timeout: float = 240) -> None:
        def done() -> bool:
            s = self.status()
            return s.get("phase") == phase and s.get("stableRevision") == stable

        log = self.op.log if self.op is not None else str
        wait_for(f"{NAME} {phase} at {stable}", done, timeout, detail=lambda: f"{self.status()}\n{log()[-2000:]}")

    def start(self, images: list[str]) -> None:
        kc = self.kc
        kc.kind("load", "docker-image", *images, "--name", kc.name, timeout=900)
        kc.kubectl("apply", "--server-side", "--force-conflicts", f"-f={CRD}")
        wait_for("the Rollout CRD established", _established(kc), 60)  # kubectl wait can fail before status
        kc.kubectl("create", "namespace", NS)
        system = {"modship.dev/system": NAME}
        objects = [
            node_port(f"{NAME}-router-nodeport", self.router_port, {**system, "modship.dev/component": "router"}),
            node_port(f"{NAME}-stable-nodeport", self.direct_port, {**system, "modship.dev/revision": STABLE}),
            rollout(STABLE),
        ]
        kc.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(o) for o in objects))
        op_image = images[0]
        self.op = OperatorProcess(
            kc.kubeconfig, NS, self.scratch, identity="bench", env={"MODSHIP_ROUTER_IMAGE": op_image}
        )
        self.rollouts = KubeRollouts(kubeconfig=str(kc.kubeconfig), namespace=NS)
        self.wait_phase("Idle", STABLE)
        for url, want in ((self.router_url, "stable"), (self.direct_url, "")):
            wait_for(f"{url} answering", _answers(url, want), 180, detail=self._log)

    def _log(self) -> str:
        return self.op.log()[-3000:] if self.op is not None else ""

    def promote(self, revision: str) -> None:
        assert self.rollouts is not None
        actor = Actor(user="bench", reason="bench/kind.py")
        KubeControl(self.rollouts).promote(NAME, PromoteRequest(revision=revision), actor=actor)

    def admin(self) -> httpx.Client:
        secret = self.kc.get_json("-n", NS, "secret", "modship-router-token")
        token = base64.b64decode(secret["data"]["token"]).decode()
        return httpx.Client(base_url=f"{self.router_url}/-/modship", timeout=2, headers={"x-modship-token": token})

    def stop(self) -> None:
        if self.rollouts is not None:
            self.rollouts.close()
        if self.op is not None:
            self.op.stop()


def _established(kc: KindCluster) -> Callable[[], bool]:
    def done() -> bool:
        conditions = (kc.get_json("crd/rollouts.modship.dev").get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    return done


def _answers(url: str, routed: str) -> Callable[[], bool]:
    """Whether ``url`` answers a prediction with 200, routed ``routed`` (``x-modship-routed``)."""
    return lambda: _routed(url) == routed


def _routed(url: str) -> str | None:
    try:
        r = httpx.post(f"{url}/predict", json={"text": "x"}, timeout=5)
    except httpx.HTTPError:
        return None
    return r.headers.get("x-modship-routed", "") if r.status_code == 200 else None


def router_cost(c: Cluster, cfg: load.Load) -> load.Measured:
    router_pids = pod_pids(c.kc, f"modship.dev/system={NAME},modship.dev/component=router")
    stable_pids = pod_pids(c.kc, f"modship.dev/system={NAME},modship.dev/revision={STABLE}")
    targets = {
        DIRECT: load.Target(c.direct_url, tuple(stable_pids)),
        ROUTER: load.Target(c.router_url, (*router_pids, *stable_pids)),
    }
    return load.side_by_side(targets, load.Inputs(load.bbc_texts(200), unique=True), cfg, scratch=c.scratch)


def _answered_after(client: rollback.Client, t: float) -> Callable[[], bool]:
    return lambda: bool(client.answers) and client.answers[-1][0] > t


def failing_canaries(c: Cluster, revisions: list[str], fail_after: float) -> list[dict[str, Any]]:
    """Each revision promoted under steady load: promotion to first canary answer, first failure to
    100 % stable, failed requests (bench/rollback.py's definitions)."""
    client = rollback.Client(c.router_url)
    client.start()
    runs = []
    try:
        with c.admin() as admin:
            for rev in revisions:
                t0 = time.monotonic()
                mark = len(client.answers)
                c.promote(rev)
                served = rollback.first_answer(client, "canary", t0, timeout=180)
                first = rollback.first_answer(client, "canary-fallback", t0, timeout=fail_after + 120)

                def no_canary() -> bool:
                    return admin.get("/config").json().get("canary") is None

                wait_until(no_canary, timeout=120, interval=0.02, what="100 % stable")
                t_stable = time.monotonic()
                wait_until(_answered_after(client, t_stable + 1), timeout=60, what="answers after")
                answers = client.answers[mark:]
                runs.append(
                    {
                        "revision": rev,
                        "seconds_promote_to_canary": round(served - t0, 3),
                        "seconds_to_stable": round(t_stable - first, 3),
                        "failed_requests": sum(1 for t, code, _ in answers if code != 200 and t <= t_stable + 1),
                        "retried_on_stable": sum(1 for a in answers if a[2] == "canary-fallback"),
                    }
                )
                c.wait_phase("Aborted", STABLE)
    finally:
        client.stop.set()
        client.join(30)
    return runs


def measure(
    kc: KindCluster,
    scratch: Path,
    cfg: load.Load,
    *,
    runs: int = 3,
    fail_after: float = FAIL_AFTER_S,
    router_port: int = ROUTER_PORT,
    direct_port: int = DIRECT_PORT,
) -> dict[str, Any]:
    """The kind figures on an existing cluster: router vs direct, then ``runs`` failing canaries."""
    healthy, failing = smoke_images(fail_after)
    revisions = [f"r{i + 1:012x}" for i in range(runs)]
    tags = [f"{REPO}:{STABLE}", *(f"{REPO}:{r}" for r in revisions)]
    for tag in tags:
        _docker("tag", healthy if tag.endswith(STABLE) else failing, tag)
    c = Cluster(kc, scratch, router_port=router_port, direct_port=direct_port)
    try:
        c.start([operator_image(), *tags])
        cost = router_cost(c, cfg)
        canaries = failing_canaries(c, revisions, fail_after)
    finally:
        c.stop()
    return {"cost": cost, "runs": canaries}


def run(ws: setup.Workspace, cfg: load.Load) -> dict[str, Any]:
    missing = docker_missing()
    if missing:
        print(f"  skipped: {missing}", flush=True)
        return {"skipped": missing, "met": False, "title": TITLE}
    print("  the local runtime (bench/rollback.py)", flush=True)
    local = rollback.run(ws, cfg)
    scratch = ws.scratch / "kind"
    scratch.mkdir(parents=True, exist_ok=True)
    print("  kind: node image, cluster", flush=True)
    t0 = time.monotonic()
    with KindCluster(build_node_image()) as kc:
        up = time.monotonic() - t0
        got = measure(kc, scratch, dataclasses.replace(cfg, runs=min(cfg.runs, RUNS)), runs=RUNS)
    return report(local, got, cluster_s=up)


def report(local: dict[str, Any], got: dict[str, Any], *, cluster_s: float) -> dict[str, Any]:
    cost: load.Measured = got["cost"]
    runs: list[dict[str, Any]] = got["runs"]
    med = statistics.median
    kind_fig = {
        "seconds_promote_to_canary_median": med(r["seconds_promote_to_canary"] for r in runs),
        "seconds_to_stable_median": med(r["seconds_to_stable"] for r in runs),
        "failed_requests_max": max(r["failed_requests"] for r in runs),
        "runs": runs,
    }
    lf = local["figures"]
    checks = [
        results.Check("kind: s from first failure to 100 % stable", kind_fig["seconds_to_stable_median"], "<=", 5.0),
        results.Check("kind: failed client requests (worst)", kind_fig["failed_requests_max"], "<=", 0),
    ]
    for c in cost.connections:
        checks.append(results.Check(f"router/direct throughput c{c}", cost.paired(ROUTER, DIRECT, c, "rps"), ">=", 0.9))
        checks.append(
            results.Check(f"router added p50 ms c{c}", cost.paired(ROUTER, DIRECT, c, "p50_ms", diff=True), "<=", 1.0)
        )
    notes = [
        f"promotion -> first canary answer: kind {kind_fig['seconds_promote_to_canary_median']:.2f} s (median),"
        f" local {lf['seconds_promote_to_canary']:.2f} s (modship promote, bentoml serve start included)",
        f"first failure -> 100 % stable: kind {kind_fig['seconds_to_stable_median']:.2f} s,"
        f" local {lf['seconds_to_stable_median']:.2f} s; failed requests: kind {kind_fig['failed_requests_max']},"
        f" local {lf['failed_requests_max']}",
        f"router vs direct: revisions answer after {DELAY} (sleep); connections {list(cost.connections)};"
        f" cluster created in {cluster_s:.0f} s",
    ]
    return results.result(
        figures={ROUTER: cost.figures(ROUTER), "kind rollback": kind_fig},
        baseline={DIRECT: cost.figures(DIRECT), "local rollback": lf},
        checks=checks,
        goal="kind: <= 5 s to 100 % stable, 0 failed; router >= 0.9x direct's throughput, <= 1 ms added p50",
        title=TITLE,
        notes=notes,
        local={"ratio": local["ratio"], "met": local["met"], "checks": local["checks"]},
        host=cost.foreign(),
    )
