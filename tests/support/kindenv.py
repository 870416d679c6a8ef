"""A kind cluster with real pods, from the node image ``tools/kind/build.sh`` builds offline.

The cluster runs on the private dockerd of ``tools/kind/host-setup.sh`` (``DOCKER_HOST``
``unix:///run/modship-docker.sock``). Its API server and NodePorts are published on 127.0.0.1
only; the kubeconfig is a temp file (never ``~/.kube``). CoreDNS's ``forward`` to the node's
resolver is removed, so no lookup leaves the machine.

    with KindCluster(build_node_image()) as kc:
        kc.kubectl("get", "nodes")
        kc.load("modship.local/kind-smoke:1")
        urllib.request.urlopen(f"http://127.0.0.1:{kc.host_port(30080)}/")
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.support.k8senv import REPO_ROOT, free_ports, read_versions

KIND_DIR = REPO_ROOT / "tools" / "kind"
BUILD_SCRIPT = KIND_DIR / "build.sh"
HOST_SETUP = KIND_DIR / "host-setup.sh"
DOCKER_HOST = "unix:///run/modship-docker.sock"
HINT = "run `bash tools/kind/host-setup.sh` (private dockerd) and `bash tools/kind/build.sh` (node image)"
# NodePorts published on 127.0.0.1 (docs/plans/kind.md step 5), one per test that needs a way in (the
# tests of a session share one cluster): 30080 a router, 30081 a stable Service called directly (the
# bench baseline), 30082 the smoke test, 30083/30084 the kind bench's router and stable Service in
# tests/kind/test_bench_kind.py, 30085 the router-policy test, 30500 the traffic test; the others are
# free.
NODE_PORTS = (30080, 30081, 30082, 30083, 30084, 30085, 30086, 30087, 30500)
POLL_INTERVAL = 0.5


class KindError(RuntimeError):
    """The kind cluster could not be built, created or used."""


def kind_env() -> dict[str, str]:
    """The environment of every docker/kind call: the private daemon, no BuildKit."""
    env = dict(os.environ)
    env.setdefault("DOCKER_HOST", DOCKER_HOST)
    env["DOCKER_BUILDKIT"] = "0"
    return env


def cache_root() -> Path:
    cache = os.environ.get("MODSHIP_CACHE")
    if not cache:
        cache = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modship")
    return Path(cache)


def bin_dir() -> Path:
    """Where build.sh puts kind, kubectl and the node binaries."""
    k8s = read_versions()
    kind = read_versions(KIND_DIR / "versions.env")
    return cache_root() / f"kind-{kind['KIND']}-k8s-{k8s['K8S']}" / "bin"


def build_node_image(timeout: float = 3600.0) -> str:
    """Run build.sh (a few seconds when cached) and return the node image tag it printed last."""
    try:
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], env=kind_env(), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise KindError(f"tools/kind/build.sh did not finish within {timeout:.0f}s") from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise KindError(f"tools/kind/build.sh failed (exit {proc.returncode}):\n{tail}\n{HINT}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise KindError("tools/kind/build.sh printed no node image tag")
    return lines[-1]


def wait_for(what: str, check: Callable[[], bool], timeout: float, detail: Callable[[], str] | None = None) -> None:
    """Poll ``check`` until True; raise KindError naming ``what`` (and ``detail()``) after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            if check():
                return
        except (subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
            last = exc
        if time.monotonic() > deadline:
            extra = f" (last error: {last!r})" if last else ""
            more = f"\n{detail()}" if detail else ""
            raise KindError(f"timed out after {timeout:.0f}s waiting for {what}{extra}{more}")
        time.sleep(POLL_INTERVAL)


def cluster_config(name: str, host_ports: dict[int, int], etcd_tag: str) -> str:
    """kind's Cluster config: API server and NodePorts on 127.0.0.1, no default CNI (the node has ptp)."""
    mappings = "".join(
        f"  - {{containerPort: {node_port}, hostPort: {host_port}, listenAddress: 127.0.0.1, protocol: TCP}}\n"
        for node_port, host_port in sorted(host_ports.items())
    )
    return (
        "kind: Cluster\n"
        "apiVersion: kind.x-k8s.io/v1alpha4\n"
        f"name: {name}\n"
        "networking: {apiServerAddress: 127.0.0.1, disableDefaultCNI: true, kubeProxyMode: iptables,"
        " podSubnet: 10.244.0.0/16, serviceSubnet: 10.96.0.0/16}\n"
        "kubeadmConfigPatches:\n"
        "- |\n"
        "  kind: ClusterConfiguration\n"
        f'  etcd: {{local: {{imageTag: "{etcd_tag}"}}}}\n'
        "nodes:\n"
        "- role: control-plane\n"
        "  extraPortMappings:\n"
        f"{mappings}"
    )


def strip_forward(corefile: str) -> str:
    """Remove CoreDNS's ``forward . /etc/resolv.conf { ... }`` block (or one-line form)."""
    out: list[str] = []
    depth = 0
    for line in corefile.splitlines():
        stripped = line.strip()
        if depth:
            depth += stripped.count("{") - stripped.count("}")
            continue
        if stripped.startswith("forward "):
            depth = stripped.count("{") - stripped.count("}")
            continue
        out.append(line)
    return "\n".join(out) + "\n"


class KindCluster:
    """``kind create cluster`` on the private dockerd; ``stop()`` deletes it (and its node container)."""

    def __init__(self, node_image: str, *, name: str | None = None, create_timeout: float = 600.0) -> None:
        self.node_image = node_image
        self.name = name or f"modship-{os.getpid()}"
        self.create_timeout = create_timeout
        self.bin_dir = bin_dir()
        self.workdir = Path(tempfile.mkdtemp(prefix="modship-kind-"))
        self.kubeconfig = self.workdir / "kubeconfig"
        self.host_ports = dict(zip(NODE_PORTS, free_ports(len(NODE_PORTS)), strict=True))
        self.create_seconds: float | None = None
        self._created = False
        for tool in ("kind", "kubectl"):
            if not os.access(self.bin_dir / tool, os.X_OK):
                raise KindError(f"{self.bin_dir / tool} missing; {HINT}")

    def __enter__(self) -> KindCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def host_port(self, node_port: int) -> int:
        """The 127.0.0.1 port that publishes ``node_port`` of the node."""
        return self.host_ports[node_port]

    # -- commands ------------------------------------------------------------------------------

    def kind(self, *args: str, check: bool = True, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        return self._run([str(self.bin_dir / "kind"), *args], check=check, timeout=timeout)

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 120.0, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args]
        return self._run(cmd, check=check, timeout=timeout, stdin=stdin)

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def rollout(self, namespace: str, deployment: str, timeout: float = 180.0) -> None:
        """Wait for a Deployment's rollout; on timeout raise with its pods' state and last logs."""
        proc = self.kubectl(
            "-n", namespace, "rollout", "status", f"deployment/{deployment}", f"--timeout={timeout:.0f}s",
            check=False, timeout=timeout + 30,
        )  # fmt: skip
        if proc.returncode != 0:
            pods = self.kubectl("-n", namespace, "get", "pods", "-o", "wide", check=False).stdout
            logs = self.kubectl(
                "-n", namespace, "logs", f"deployment/{deployment}", "--tail=20", "--all-containers", check=False
            )
            previous = self.kubectl(
                "-n", namespace, "logs", f"deployment/{deployment}", "--tail=20", "--previous", check=False
            )
            raise KindError(
                f"deployment {namespace}/{deployment} not rolled out: {proc.stderr.strip()}\n{pods}\n"
                f"logs:\n{logs.stdout or logs.stderr}\nprevious container:\n{previous.stdout or previous.stderr}"
            )

    def node_exec(self, *args: str, timeout: float = 60.0) -> str:
        """Run a command in the (single) node container; return its stdout."""
        node = f"{self.name}-control-plane"
        return self._run(["docker", "exec", node, *args], check=True, timeout=timeout).stdout

    def load(self, image: str, timeout: float = 600.0) -> None:
        """Send a local docker image into the node's containerd (``kind load docker-image``)."""
        self.kind("load", "docker-image", image, "--name", self.name, timeout=timeout)

    def export_logs(self) -> Path:
        dest = self.workdir / "logs"
        self.kind("export", "logs", str(dest), "--name", self.name, check=False, timeout=180)
        return dest

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> KindCluster:
        etcd = read_versions()["ETCD"].removeprefix("v") + "-0"
        config = self.workdir / "kind.yaml"
        config.write_text(cluster_config(self.name, self.host_ports, etcd))
        self._delete_stale()
        t0 = time.monotonic()
        self._created = True
        proc = self.kind(
            "create", "cluster", "--config", str(config), "--image", self.node_image,
            "--kubeconfig", str(self.kubeconfig), "--wait", "240s", "--retain",
            check=False, timeout=self.create_timeout,
        )  # fmt: skip
        if proc.returncode != 0:
            logs = self.export_logs()
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:])
            raise KindError(f"kind create cluster failed (exit {proc.returncode}); logs in {logs}:\n{tail}")
        self._remove_dns_forward()
        self._wait_system_pods()
        self.create_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        if self._created and not os.environ.get("MODSHIP_KIND_KEEP"):
            self.kind("delete", "cluster", "--name", self.name, check=False, timeout=180)
            self._created = False
        if not os.environ.get("MODSHIP_KIND_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- internals -----------------------------------------------------------------------------

    def _run(
        self, cmd: Sequence[str], *, check: bool, timeout: float, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(cmd), env=kind_env(), capture_output=True, text=True, timeout=timeout, input=stdin, check=False
        )
        if check and proc.returncode != 0:
            raise KindError(f"{' '.join(cmd[:4])} … failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return proc

    def _delete_stale(self) -> None:
        """Clusters left by a killed run (docker's restart policy revives their nodes) are deleted:
        ``modship-<pid>`` whose process is gone (a live session's cluster is never touched)."""
        names = self.kind("get", "clusters", check=False).stdout.split()
        for stale in names:
            pid = stale.removeprefix("modship-")
            if stale.startswith("modship-") and pid.isdigit() and not Path(f"/proc/{pid}").exists():
                with contextlib.suppress(subprocess.SubprocessError):
                    self.kind("delete", "cluster", "--name", stale, check=False, timeout=180)

    def _remove_dns_forward(self) -> None:
        cm = self.get_json("-n", "kube-system", "configmap", "coredns")
        corefile = cm["data"]["Corefile"]
        patched = strip_forward(corefile)
        if patched != corefile:
            patch = json.dumps({"data": {"Corefile": patched}})
            self.kubectl("-n", "kube-system", "patch", "configmap", "coredns", "--type", "merge", "-p", patch)
            self.kubectl("-n", "kube-system", "rollout", "restart", "deployment/coredns")

    def _wait_system_pods(self, timeout: float = 300.0) -> None:
        def ready() -> bool:
            node = self.get_json("nodes")["items"][0]
            node_ready = any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
            return node_ready and self._running("k8s-app=kube-dns", 2) and self._running("k8s-app=kube-proxy", 1)

        wait_for("node Ready with coredns and kube-proxy Running", ready, timeout, self._pods_summary)

    def _running(self, selector: str, want: int) -> bool:
        pods = self.get_json("-n", "kube-system", "pods", "-l", selector)["items"]
        ok = [
            p
            for p in pods
            if p["status"].get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
            and all(c.get("ready") for c in p["status"].get("containerStatuses", []))
        ]
        return len(ok) >= want

    def _pods_summary(self) -> str:
        return self.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
