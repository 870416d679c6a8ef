"""Helpers for the operator tests: the operator as a subprocess, Rollout documents, reading back.

The operator runs as ``python -m controller.entrypoints.operator`` against the session's real
control plane, exactly as it runs in a pod (only the credentials differ). Everything is polled with
deadlines; nothing sleeps to synchronise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client

from tests.support.k8senv import ControlPlane

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "charts" / "modship" / "crds" / "rollouts.modship.dev.yaml"
GROUP, VERSION, PLURAL = "modship.dev", "v1alpha1", "rollouts"
DEADLINE = 60.0


def poll(what: str, fn: Callable[[], T], timeout: float = DEADLINE, interval: float = 0.1) -> T:
    """fn()'s first truthy result; fail after ``timeout`` seconds (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except Exception as exc:  # the object may not exist yet
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def rev(n: int) -> str:
    return f"r{n:012x}"


def rollout_doc(
    name: str,
    *,
    revision: str,
    steps: list[dict[str, Any]],
    routing: dict[str, Any] | None = None,
    checks: list[dict[str, Any]] | None = None,
    replicas: int = 1,
    prometheus: str | None = None,
    policies: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "system": name,
        "revision": revision,
        "workload": {"image": "registry.example.com/" + name, "replicas": replicas, "port": 3000},
        "strategy": {"canary": {"steps": steps}},
    }
    if routing:
        spec["trafficRouting"] = routing
    if checks:
        spec["analysis"] = {"checks": checks}
    if prometheus:
        spec["prometheus"] = prometheus
    if policies:
        spec["policies"] = policies
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Rollout", "metadata": {"name": name}, "spec": spec}


class Cluster:
    """Typed access to the test cluster (the official client, independent of modship's adapter)."""

    def __init__(self, cp: ControlPlane, api: client.ApiClient) -> None:
        self.cp, self.api = cp, api
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.net = client.NetworkingV1Api(api)

    def apply(self, ns: str, doc: dict[str, Any]) -> None:
        """Server-side apply as a person would (field manager ``kubectl``)."""
        self.cp.kubectl("apply", "--server-side", "--field-manager=kubectl", "-n", ns, "-f", "-", input=json.dumps(doc))

    def rollout(self, ns: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        return obj

    def status(self, ns: str, name: str) -> dict[str, Any]:
        return self.rollout(ns, name).get("status") or {}

    def patch_spec(self, ns: str, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, {"spec": spec})

    def promote(self, ns: str, name: str, revision: str) -> None:
        self.patch_spec(ns, name, {"revision": revision})

    def wait_phase(
        self, ns: str, name: str, phase: str, *, stable: str | None = None, timeout: float = DEADLINE
    ) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            st = self.status(ns, name)
            ok = st.get("phase") == phase and (stable is None or st.get("stableRevision") == stable)
            return st if ok else None

        return poll(f"{ns}/{name} {phase}" + (f" with stable {stable}" if stable else ""), done, timeout)

    def custom_obj(self, ns: str, group: str, version: str, plural: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(group, version, ns, plural, name)
        return obj

    def events(self, ns: str, name: str) -> list[client.CoreV1Event]:
        uid = self.rollout(ns, name)["metadata"]["uid"]
        items = self.core.list_namespaced_event(ns, field_selector=f"involvedObject.uid={uid}").items
        return sorted(items, key=lambda e: e.event_time or e.first_timestamp)

    def weights(self, ns: str, route: str) -> dict[str, int]:
        """Backend weights of the HTTPRoute's weighted rule, by Service name."""
        obj = self.custom_obj(ns, "gateway.networking.k8s.io", "v1", "httproutes", route)
        rule = next(r for r in obj["spec"]["rules"] if r.get("name") != "modship-canary-header")
        return {b["name"]: b.get("weight", 1) for b in rule["backendRefs"]}


class OperatorProcess:
    """``python -m controller.entrypoints.operator`` as a subprocess, logging to a file."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        log_dir: Path,
        *,
        identity: str,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.identity = identity
        self.log_path = log_dir / f"operator-{identity}.log"
        cmd = [
            sys.executable,
            "-m",
            "controller.entrypoints.operator",
            f"--namespace={namespace}",
            f"--kubeconfig={kubeconfig}",
            f"--identity={identity}",
            "--lease-duration=3",
            "--renew-deadline=2",
            "--retry-period=0.5",
            *args,
        ]
        self._log = self.log_path.open("ab")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=REPO, start_new_session=True
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no lease release, no cleanup (a crash)."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def lease_holder(cluster: Cluster, ns: str, name: str = "modship-operator") -> str | None:
    try:
        lease = client.CoordinationV1Api(cluster.api).read_namespaced_lease(name, ns)
    except client.ApiException:
        return None
    holder: str | None = lease.spec.holder_identity
    return holder or None
