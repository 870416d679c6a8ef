"""The Kubernetes operator at scale, on the real control plane (tests/support/k8senv.py).

    python -m bench.k8s_operator [--sizes 100,500,1000] [--json]

For each size N, on a fresh control plane (sizes share no API server history): N cheap Rollouts
(1 replica, replica ratios; steps ``setWeight 50, pause 3s, setWeight 80, pause 3s``) are created
and initialised, and once their stable pods run, each gets a new revision, 10 per second
cluster-wide (a steady stream of canaries; a single instant start of N canaries measures the
cluster's pod creation, not the operator), and runs to promotion. Measured on the operator process
(``python -m controller.entrypoints.operator`` with its defaults):

- CPU seconds (user + system, from ``/proc``) from the first Rollout created to the last promoted;
- peak RSS (``VmHWM``): the goal is < 300 MB at N = 1,000;
- step latency: for every pause step, from when it is due (``step_started + duration`` as the
  operator wrote it) to the arrival, on a watch, of the status write that leaves it; p50, p99 and
  max over 2 N samples (goal: p99 < 2 s at N = 1,000).

The baseline, measured in the same run, is the same operator idle with no Rollouts (start-up CPU,
RSS). The control plane gets higher client QPS for kube-controller-manager and the scheduler (their
defaults would make thousands of pods take minutes); kwok makes pods Ready, on extra kwok nodes
sized for 2 N pods. Everything shares the machine's cores with the operator, as on a small node;
``control_plane_cpu_s`` shows who used them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from tests.support.k8senv import ControlPlane, _Proc

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "charts" / "modship" / "crds" / "rollouts.modship.dev.yaml"
NS = "bench"
GROUP, VERSION, PLURAL = "modship.dev", "v1alpha1", "rollouts"
PAUSE = 3.0
STEPS = [
    {"setWeight": 50},
    {"pause": {"duration": f"{PAUSE:g}s"}},
    {"setWeight": 80},
    {"pause": {"duration": f"{PAUSE:g}s"}},
]
PAUSE_STEPS = (1, 3)  # indices of the pause steps
GOAL_RSS_MB, GOAL_P99_S, GOAL_SIZE = 300.0, 2.0, 1000
PODS_PER_NODE = 500
START_RATE = 10.0  # new canaries per second, cluster-wide


class BenchPlane(ControlPlane):
    """The test control plane with client QPS raised for the controllers (they create the pods)."""

    FLAGS = {
        "kube-controller-manager": [
            "--kube-api-qps=400",
            "--kube-api-burst=800",
            "--concurrent-deployment-syncs=20",
            "--concurrent-replicaset-syncs=20",
            "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",  # kcm_work() reads /metrics
        ],
        "kube-scheduler": ["--kube-api-qps=400", "--kube-api-burst=800"],
    }

    def _spawn(self, name: str, args: list[str]) -> _Proc:
        return super()._spawn(name, [*args, *self.FLAGS.get(name, [])])


def rev(n: int) -> str:
    return f"r{n:012x}"


def rollout(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Rollout",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "system": name,
            "revision": rev(1),
            "workload": {"image": "registry.example.com/bench", "replicas": 1, "port": 3000},
            "strategy": {"canary": {"steps": STEPS}},
        },
    }


def node(name: str) -> dict[str, Any]:
    res = {"cpu": "1000", "memory": "4Ti", "pods": str(PODS_PER_NODE), "ephemeral-storage": "10Ti"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "type": "kwok",
            },
        },
        "spec": {},
        "status": {
            "allocatable": res,
            "capacity": res,
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "fake"},
        },
    }


# -- the operator process ----------------------------------------------------------------------------


class Measured:
    """A controller process whose CPU and peak RSS the bench reads from ``/proc``."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str], cwd: Path | None = None) -> None:
        self._log = log.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd, env=env)

    def cpu(self) -> float:
        """User + system CPU seconds so far."""
        return _cpu(self.proc.pid)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class Operator(Measured):
    def __init__(self, kubeconfig: Path, log: Path) -> None:
        cmd = [
            sys.executable,
            "-m",
            "controller.entrypoints.operator",
            f"--namespace={NS}",
            f"--kubeconfig={kubeconfig}",
            "--identity=bench",
        ]
        super().__init__(cmd, log, {**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=REPO)


# -- watching the Rollouts ----------------------------------------------------------------------------


class Watcher:
    """Every status the operator writes, as it arrives: phases, and the latency of each pause step."""

    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.phase: dict[str, str] = {}
        self.stable: dict[str, str] = {}
        self.entered: dict[tuple[str, int], float] = {}  # (rollout, pause step) -> due time
        self.latency: dict[tuple[str, int], float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def _run(self) -> None:
        rv = None
        while not self._stop.is_set():
            watches: Any = watch
            w = watches.Watch()
            kwargs: dict[str, Any] = {"timeout_seconds": 30}
            if rv:
                kwargs["resource_version"] = rv
            try:
                for ev in w.stream(self.custom.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, **kwargs):
                    obj = ev["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    self._see(obj, time.time())
                    if self._stop.is_set():
                        break
            except client.ApiException as exc:
                if exc.status == 410:
                    rv = None
            except Exception:
                time.sleep(0.2)

    def _see(self, obj: dict[str, Any], at: float) -> None:
        name, st = obj["metadata"]["name"], obj.get("status") or {}
        machine = st.get("machine") or {}
        step = int(machine.get("step", 0))
        with self._lock:
            self.phase[name] = st.get("phase", "")
            self.stable[name] = st.get("stableRevision", "")
            if machine.get("canary") != rev(2) and st.get("stableRevision") != rev(2):
                return
            for k in PAUSE_STEPS:
                if step == k and machine.get("step_started") is not None:
                    self.entered.setdefault((name, k), float(machine["step_started"]) + PAUSE)
                elif (step > k or st.get("phase") == "Promoted") and (name, k) in self.entered:
                    self.latency.setdefault((name, k), at - self.entered[(name, k)])

    def count(self, phase: str, stable: str) -> int:
        with self._lock:
            return sum(1 for n, p in self.phase.items() if p == phase and self.stable.get(n) == stable)

    def stop(self) -> None:
        self._stop.set()


def wait(what: str, cond: Any, timeout: float) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.2)
    return time.monotonic() - t0


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


# -- one size ---------------------------------------------------------------------------------------------


@contextmanager
def plane(n: int, crds: Sequence[Path] = (CRD,)) -> Iterator[tuple[BenchPlane, Any]]:
    cp = BenchPlane()
    with cp:
        cp.kubectl("apply", "--server-side", *(f"-f={c}" for c in crds))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        nodes = [node(f"bench-node-{i}") for i in range(max(1, -(-2 * n // PODS_PER_NODE)) + 1)]
        cp.kubectl(
            "apply",
            "--validate=false",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}),
        )
        cp.kubectl("create", "namespace", NS)
        cp.kubectl("wait", "--for=condition=Ready", "--timeout=60s", *(f"node/{x['metadata']['name']}" for x in nodes))
        connect: Any = config.new_client_from_config
        with connect(config_file=str(cp.kubeconfig)) as api:
            api.configuration.connection_pool_maxsize = 16
            yield cp, api


def measure(n: int, scratch: Path) -> dict[str, Any]:
    with plane(n) as (cp, api):
        op = Operator(cp.kubeconfig, scratch / f"operator-{n}.log")
        custom = client.CustomObjectsApi(api)
        watcher = Watcher(api).start()
        try:
            wait("the operator to take its lease", lambda: _leased(api), 60)
            time.sleep(1.0)  # settle: the idle operator is the baseline
            base_cpu, base_rss = op.cpu(), op.peak_rss_mb()
            t0, cpu0, kcm0, writes0 = time.monotonic(), op.cpu(), kcm_cpu(cp), api_writes(cp)
            work0 = kcm_work(cp)
            names = [f"s{i:04d}" for i in range(n)]
            with ThreadPoolExecutor(8) as pool:
                list(
                    pool.map(
                        lambda x: custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, rollout(x)), names
                    )
                )
            init = wait("every Rollout initialised", lambda: watcher.count("Idle", rev(1)) >= n, 120 + n * 0.6)
            wait("every stable Deployment available", lambda: _available(api) >= n, 120 + n * 0.6)
            body = {"spec": {"revision": rev(2)}}
            t1 = time.monotonic()
            for i, x in enumerate(names):  # canaries start at a steady rate, not all in one instant
                time.sleep(max(0.0, t1 + i / START_RATE - time.monotonic()))
                custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, x, body)
            wait("every Rollout promoted", lambda: watcher.count("Promoted", rev(2)) >= n, 120 + n * 0.5)
            done = time.monotonic() - t1
            cpu, rss, kcm = op.cpu() - cpu0, op.peak_rss_mb(), kcm_cpu(cp) - kcm0
            writes = since(api_writes(cp), writes0)
            work = {
                k: round(v - work0.get(k, 0.0), 2) for k, v in kcm_work(cp).items() if v - work0.get(k, 0.0) >= 0.01
            }
            plane_cpu = {p.name: round(_cpu(p.popen.pid), 1) for p in cp._procs}
            wall = time.monotonic() - t0
            lat = list(watcher.latency.values())
            by_step = {}
            for k in PAUSE_STEPS:
                xs = [v for (_, j), v in watcher.latency.items() if j == k]
                by_step[f"pause{k}"] = [round(pct(xs, q), 3) for q in (0.5, 0.99)]
        finally:
            watcher.stop()
            op.stop()
    return {
        "rollouts": n,
        "cpu_s": round(cpu, 2),
        "cpu_ms_per_rollout": round(1000 * cpu / n, 2),
        "kcm_cpu_s": round(kcm, 2),
        "cluster_cpu_s": round(cpu + kcm, 2),
        "peak_rss_mb": round(rss, 1),
        "step_latency_p50_s": round(pct(lat, 0.5), 3),
        "step_latency_p99_s": round(pct(lat, 0.99), 3),
        "step_latency_max_s": round(max(lat, default=float("nan")), 3),
        "step_samples": len(lat),
        "step_latency_p50_p99_by_step": by_step,
        "init_s": round(init, 1),
        "rollout_s": round(done, 1),
        "wall_s": round(wall, 1),
        "control_plane_cpu_s": plane_cpu,
        "api_writes": writes,
        "kcm_work_s": work,
        "baseline": {"cpu_s": round(base_cpu, 2), "peak_rss_mb": round(base_rss, 1)},
    }


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kcm_cpu(cp: ControlPlane) -> float:
    """CPU seconds of kube-controller-manager so far (it makes the ReplicaSets and pods)."""
    return next(_cpu(p.popen.pid) for p in cp._procs if p.name == "kube-controller-manager")


def kcm_work(cp: ControlPlane) -> dict[str, float]:
    """Seconds each kube-controller-manager controller has spent working its queue so far
    (``workqueue_work_duration_seconds_sum`` by queue name): where the cluster's share of the CPU goes."""
    import ssl
    import urllib.request

    ctx = ssl._create_unverified_context()  # kcm's self-signed serving certificate, on 127.0.0.1 only
    url = f"https://127.0.0.1:{cp._ports['kcm']}/metrics"
    text = urllib.request.urlopen(url, context=ctx, timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("workqueue_work_duration_seconds_sum{"):
            name = line.split('name="', 1)[1].split('"', 1)[0]
            out[name] = float(line.rsplit(" ", 1)[1])
    return out


def work_since(cp: ControlPlane, before: dict[str, float]) -> dict[str, float]:
    """``kcm_work`` since ``before``, the controllers that worked at all."""
    now = kcm_work(cp)
    return {k: round(v - before.get(k, 0.0), 2) for k, v in now.items() if v - before.get(k, 0.0) >= 0.01}


def api_writes(cp: ControlPlane) -> dict[str, int]:
    """The API server's count of write requests so far, by verb and resource (every client's)."""
    out: dict[str, int] = {}
    for line in cp.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1 : line.rindex("}")].split(","))
        labels = {k: v.strip('"') for k, v in labels.items()}
        if labels.get("verb") not in ("POST", "PATCH", "PUT", "DELETE", "APPLY", "CREATE", "UPDATE"):
            continue
        sub = f"/{labels['subresource']}" if labels.get("subresource") else ""
        key = f"{labels['verb']} {labels.get('resource', '')}{sub}"
        out[key] = out.get(key, 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


def since(now: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(now.items()) if v - before.get(k, 0)}


def _available(api: client.ApiClient) -> int:
    items: Any = client.AppsV1Api(api).list_namespaced_deployment(NS).items
    return sum(1 for d in items if (d.status.available_replicas or 0) >= 1)


def _leased(api: client.ApiClient) -> bool:
    try:
        lease: Any = client.CoordinationV1Api(api).read_namespaced_lease("modship-operator", NS)
    except client.ApiException:
        return False
    return bool(lease.spec.holder_identity == "bench")


def run(sizes: Sequence[int] = (100, 500, 1000)) -> dict[str, Any]:
    """Figures per size; ``met`` when the largest size (1,000 by default) meets both goals."""
    scratch = Path(tempfile.mkdtemp(prefix="modship-bench-k8s-"))
    figures = {str(n): measure(n, scratch) for n in sizes}
    last = figures[str(max(sizes))]
    baseline = {"rollouts": 0, **last["baseline"]}
    rss_ok = last["peak_rss_mb"] < GOAL_RSS_MB
    p99_ok = last["step_latency_p99_s"] < GOAL_P99_S
    return {
        "figures": figures,
        "baseline": baseline,
        "ratio": round(last["peak_rss_mb"] / baseline["peak_rss_mb"], 3) if baseline["peak_rss_mb"] else None,
        "goal": f"{GOAL_SIZE} Rollouts: peak RSS < {GOAL_RSS_MB:g} MB and p99 step latency < {GOAL_P99_S:g} s",
        "met": bool(rss_ok and p99_ok and max(sizes) >= GOAL_SIZE),
        "checks": [
            {
                "name": f"peak_rss_mb@{max(sizes)}",
                "value": last["peak_rss_mb"],
                "goal": f"< {GOAL_RSS_MB:g}",
                "met": rss_ok,
            },
            {
                "name": f"step_p99_s@{max(sizes)}",
                "value": last["step_latency_p99_s"],
                "goal": f"< {GOAL_P99_S:g}",
                "met": p99_ok,
            },
        ],
        "logs": str(scratch),
    }


def table(result: dict[str, Any]) -> str:
    rows = [("rollouts", "CPU s", "ms/rollout", "peak RSS MB", "p50 s", "p99 s", "max s", "samples", "wall s")]
    base = result["baseline"]
    rows.append(("0 (baseline)", f"{base['cpu_s']:.2f}", "-", f"{base['peak_rss_mb']:.1f}", "-", "-", "-", "-", "-"))
    for f in result["figures"].values():
        rows.append(
            (
                str(f["rollouts"]),
                f"{f['cpu_s']:.2f}",
                f"{f['cpu_ms_per_rollout']:.1f}",
                f"{f['peak_rss_mb']:.1f}",
                f"{f['step_latency_p50_s']:.3f}",
                f"{f['step_latency_p99_s']:.3f}",
                f"{f['step_latency_max_s']:.3f}",
                str(f["step_samples"]),
                f"{f['wall_s']:.0f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.append(f"goal: {result['goal']} -> {'met' if result['met'] else 'NOT met'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.k8s_operator", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100,500,1000", help="comma-separated numbers of Rollouts")
    p.add_argument("--json", action="store_true", help="print the result as JSON too")
    a = p.parse_args(argv)
    result = run([int(x) for x in a.sizes.split(",")])
    print(table(result))
    if a.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
