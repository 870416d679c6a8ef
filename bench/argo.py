"""The operator beside Argo Rollouts on the same control plane, same Rollout shape, same load.

    python -m bench.argo [--rollouts 1000] [--only modship|argo] [--json]

Argo Rollouts v1.8.5's rollouts-controller is built from the Go module proxy by
``tools/k8s/argo.sh`` (cached in ``$MODSHIP_CACHE/argo-rollouts-<v>``). For each controller, on a
fresh control plane (``bench.k8s_operator``'s: kwok nodes, kube-controller-manager with raised QPS),
N Rollouts of one replica with the steps ``setWeight 50, pause 3s, setWeight 80, pause 3s``, without
traffic routing (modship: replica ratios; Argo: its basic canary, which scales ReplicaSets), each
with the one Service that sends it traffic (modship's operator creates the system's Service ``S``;
an Argo user writes it beside the Rollout, so the bench creates it with each Rollout: both clusters
keep the same Endpoints up to date), are created and initialised; then each gets a new revision,
10 per second, and runs to promotion.
Argo runs namespaced with ``--qps=400 --burst=800`` (its default 40 QPS would throttle it; modship's
client is not throttled) and its default 10 rollout workers. Measured:

- peak RSS (``VmHWM``) of the controller process;
- p99 step latency: per pause step, from when it is due to the watch event that leaves it. modship:
  ``status.machine.step_started`` + 3 s; Argo: ``status.pauseConditions[].startTime`` (whole seconds,
  from which Argo computes the expiry) + 3 s;
- the cluster's CPU for the rollouts: CPU seconds of the controller plus kube-controller-manager
  (modship writes Deployments and the cluster makes their ReplicaSets; Argo writes ReplicaSets)
  from the first Rollout created to the last promoted, total and per rollout.

The goal (issue 12): all three at or below Argo's at N = 1,000.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from bench import k8s_operator as kop
from bench.results import Check, ratio, result
from tests.support.k8senv import free_ports

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "tools" / "k8s" / "argo.sh"
NS = kop.NS
GROUP, VERSION, PLURAL = "argoproj.io", "v1alpha1", "rollouts"
N = 1000
IMAGE = "registry.example.com/bench"


def build() -> Path:
    """Argo's cache dir (``bin/rollouts-controller``, ``crds/``); builds it on the first call."""
    out = subprocess.run(["bash", str(BUILD)], check=True, stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def rollout(name: str, revision: str) -> dict[str, Any]:
    """The modship bench's Rollout in Argo's terms (the same pod as modship's Deployment, roughly)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Rollout",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": {"modship.dev/system": name}},
            "template": {"metadata": {"labels": {"modship.dev/system": name}}, "spec": pod(revision)},
            "strategy": {"canary": {"steps": kop.STEPS}},
        },
    }


def service(name: str) -> dict[str, Any]:
    """The Service in front of an Argo Rollout's pods, as its user writes it (modship makes ``S``)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "selector": {"modship.dev/system": name},
            "ports": [{"name": "http", "port": 3000, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def pod(revision: str) -> dict[str, Any]:
    return {
        "containers": [
            {
                "name": "system",
                "image": f"{IMAGE}:{revision}",
                "ports": [{"name": "http", "containerPort": 3000, "protocol": "TCP"}],
                "env": [{"name": "MODSHIP_REVISION", "value": revision}],
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
            }
        ]
    }


class ArgoController(kop.Measured):
    def __init__(self, root: Path, kubeconfig: Path, log: Path) -> None:
        metrics, healthz = free_ports(2)
        cmd = [
            str(root / "bin" / "rollouts-controller"),
            f"--kubeconfig={kubeconfig}",
            "--namespaced",
            f"--namespace={NS}",
            "--loglevel=warn",
            "--qps=400",
            "--burst=800",
            f"--metricsport={metrics}",
            f"--healthzPort={healthz}",
        ]
        super().__init__(cmd, log, {**os.environ, "POD_NAMESPACE": NS})


class ArgoWatcher:
    """Argo Rollouts' statuses as they arrive: the stable ReplicaSet hash and the pause steps."""

    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.first: dict[str, str] = {}  # name -> the first stable pod hash
        self.stable: dict[str, str] = {}
        self.healthy: dict[str, bool] = {}
        self.entered: dict[tuple[str, int], float] = {}
        self.latency: dict[tuple[str, int], float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ArgoWatcher:
        self._thread.start()
        return self

    def _run(self) -> None:
        rv = None
        while not self._stop.is_set():
            w: Any = watch.Watch()
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
        stable, current = st.get("stableRS") or "", st.get("currentPodHash") or ""
        step = int(st.get("currentStepIndex") or 0)
        with self._lock:
            if stable and name not in self.first:
                self.first[name] = stable
            self.stable[name] = stable
            self.healthy[name] = st.get("phase") == "Healthy"
            if not current or current == self.first.get(name):
                return  # not the new revision
            promoted = stable == current
            for k in kop.PAUSE_STEPS:
                paused = [c for c in st.get("pauseConditions") or [] if c.get("reason") == "CanaryPauseStep"]
                if step == k and paused and (name, k) not in self.entered:
                    self.entered[(name, k)] = _epoch(paused[0]["startTime"]) + kop.PAUSE
                elif (step > k or promoted) and (name, k) in self.entered:
                    self.latency.setdefault((name, k), at - self.entered[(name, k)])

    def initialised(self) -> int:
        with self._lock:
            return sum(1 for n, s in self.first.items() if s and self.healthy.get(n))

    def promoted(self) -> int:
        with self._lock:
            return sum(1 for n, s in self.stable.items() if s and s != self.first.get(n) and self.healthy.get(n))

    def stop(self) -> None:
        self._stop.set()


def _epoch(stamp: str) -> float:
    import datetime as dt

    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


def measure_argo(n: int, scratch: Path, root: Path) -> dict[str, Any]:
    crds = sorted((root / "crds").glob("*.yaml"))
    with kop.plane(n, crds) as (cp, api):
        ctl = ArgoController(root, cp.kubeconfig, scratch / f"argo-{n}.log")
        custom = client.CustomObjectsApi(api)
        watcher = ArgoWatcher(api).start()
        try:
            time.sleep(3.0)  # settle: the idle controller
            if ctl.proc.poll() is not None:
                raise RuntimeError(f"rollouts-controller exited {ctl.proc.returncode}: see {scratch}/argo-{n}.log")
            base_cpu, base_rss = ctl.cpu(), ctl.peak_rss_mb()
            t0, cpu0, kcm0, writes0 = time.monotonic(), ctl.cpu(), kop.kcm_cpu(cp), kop.api_writes(cp)
            work0 = kop.kcm_work(cp)
            names = [f"s{i:04d}" for i in range(n)]
            core = client.CoreV1Api(api)

            def create(name: str) -> None:
                core.create_namespaced_service(NS, service(name))
                custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, rollout(name, kop.rev(1)))

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(create, names))
            init = kop.wait("every Rollout initialised", lambda: watcher.initialised() >= n, 120 + n * 0.6)
            body = {"spec": {"template": {"spec": pod(kop.rev(2))}}}
            t1 = time.monotonic()
            for i, x in enumerate(names):
                time.sleep(max(0.0, t1 + i / kop.START_RATE - time.monotonic()))
                custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, x, body)
            kop.wait("every Rollout promoted", lambda: watcher.promoted() >= n, 120 + n * 0.5)
            done = time.monotonic() - t1
            cpu, rss, kcm = ctl.cpu() - cpu0, ctl.peak_rss_mb(), kop.kcm_cpu(cp) - kcm0
            writes = kop.since(kop.api_writes(cp), writes0)
            work = {
                k: round(v - work0.get(k, 0.0), 2) for k, v in kop.kcm_work(cp).items() if v - work0.get(k, 0.0) >= 0.01
            }
            wall = time.monotonic() - t0
            lat = list(watcher.latency.values())
        finally:
            watcher.stop()
            ctl.stop()
    return {
        "rollouts": n,
        "cpu_s": round(cpu, 2),
        "kcm_cpu_s": round(kcm, 2),
        "cluster_cpu_s": round(cpu + kcm, 2),
        "cpu_ms_per_rollout": round(1000 * cpu / n, 2),
        "peak_rss_mb": round(rss, 1),
        "step_latency_p50_s": round(kop.pct(lat, 0.5), 3),
        "step_latency_p99_s": round(kop.pct(lat, 0.99), 3),
        "step_latency_max_s": round(max(lat, default=float("nan")), 3),
        "step_samples": len(lat),
        "init_s": round(init, 1),
        "rollout_s": round(done, 1),
        "wall_s": round(wall, 1),
        "api_writes": writes,
        "kcm_work_s": work,
        "baseline": {"cpu_s": round(base_cpu, 2), "peak_rss_mb": round(base_rss, 1)},
    }


def run(n: int = N, only: str | None = None) -> dict[str, Any]:
    """Both controllers at ``n`` Rollouts; checks: modship's three figures at or below Argo's."""
    scratch = Path(tempfile.mkdtemp(prefix="modship-bench-argo-"))
    root = build() if only != "modship" else None
    figures: dict[str, Any] = {}
    if only in (None, "modship"):
        figures["modship"] = kop.measure(n, scratch)
    if only in (None, "argo"):
        figures["argo"] = measure_argo(n, scratch, build() if root is None else root)
    checks = []
    if len(figures) == 2:
        m, a = figures["modship"], figures["argo"]
        for key, label in (
            ("cluster_cpu_s", "cluster CPU (controller + KCM)"),
            ("peak_rss_mb", "peak RSS"),
            ("step_latency_p99_s", "p99 step latency"),
        ):
            checks.append(Check(f"{label} modship/argo @{n}", ratio(m[key], a[key]), "<=", 1.0))
    else:
        checks.append(Check("modship/argo (one side only)", float("nan"), "<=", 1.0))
    return result(
        figures={k: {"figures": _brief(v)} for k, v in figures.items()},
        baseline={},
        checks=checks,
        goal=f"{n} Rollouts: modship's peak RSS, p99 step latency and cluster CPU at or below Argo Rollouts'",
        title=f"operator beside Argo Rollouts at {n} Rollouts",
        raw=figures,
        logs=str(scratch),
        notes=side_by_side(figures),  # `python -m bench` prints these under the checks
    )


def _brief(f: dict[str, Any]) -> dict[str, Any]:
    keys = ("peak_rss_mb", "step_latency_p99_s", "cpu_s", "kcm_cpu_s", "cluster_cpu_s")
    return {k: f[k] for k in keys}


def side_by_side(raw: dict[str, Any]) -> list[str]:
    """The figures of each controller in one column each."""
    rows = [("", *raw)]
    for key, label in (
        ("peak_rss_mb", "peak RSS MB"),
        ("step_latency_p50_s", "step p50 s"),
        ("step_latency_p99_s", "step p99 s"),
        ("step_latency_max_s", "step max s"),
        ("cpu_s", "controller CPU s"),
        ("kcm_cpu_s", "kube-controller-manager CPU s"),
        ("cluster_cpu_s", "cluster CPU s"),
        ("rollout_s", "canaries done in s"),
    ):
        rows.append((label, *(f"{f[key]:g}" for f in raw.values())))
    rows.append(("cluster CPU ms/rollout", *(f"{1000 * f['cluster_cpu_s'] / f['rollouts']:.0f}" for f in raw.values())))
    widths = [max(len(x[i]) for x in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) for c, w in zip(x, widths, strict=True)) for x in rows]


def table(r: dict[str, Any]) -> str:
    lines = side_by_side(r["raw"])
    lines += [
        f"{c['name']}: {c['value']:.3g} (goal {c['goal']}) {'met' if c['met'] else 'NOT met'}" for c in r["checks"]
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.argo", description=__doc__.splitlines()[0])
    p.add_argument("--rollouts", type=int, default=N, help=f"number of Rollouts (default {N})")
    p.add_argument("--only", choices=("modship", "argo"), help="measure one controller only")
    p.add_argument("--json", action="store_true", help="print the result as JSON too")
    a = p.parse_args(argv)
    r = run(a.rollouts, a.only)
    print(table(r))
    if a.json:
        print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
