"""A real Kubernetes control plane for tests, run from binaries built by ``tools/k8s/build.sh``.

etcd -> kube-apiserver -> kube-controller-manager + kube-scheduler -> kwok (a simulated node that
makes scheduled pods Running/Ready). Everything listens on free 127.0.0.1 ports and writes its state
and logs into one temp dir, removed on stop.

    with ControlPlane() as cp:
        cp.kubectl("get", "nodes")
        api = kubernetes.config.new_client_from_config(config_file=str(cp.kubeconfig))
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSIONS_ENV = REPO_ROOT / "tools" / "k8s" / "versions.env"
BUILD_HINT = "run `bash tools/k8s/build.sh` (builds the control plane from the Go module proxy)"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "helm")

ADMIN_USER = "modship-admin"
TEST_USER = "modship-test-user"
FAKE_NODE = "kwok-node-0"
POLL_INTERVAL = 0.1


class ControlPlaneError(RuntimeError):
    """The control plane could not be located or started."""


def read_versions(path: Path = VERSIONS_ENV) -> dict[str, str]:
    """Parse the KEY=VALUE pins of tools/k8s/versions.env."""
    versions: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip().strip("'\"")
    return versions


def default_root(versions: dict[str, str] | None = None) -> Path:
    """The cache dir build.sh writes to (same logic as the script)."""
    v = versions or read_versions()
    cache = os.environ.get("MODSHIP_CACHE")
    if not cache:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        cache = str(Path(xdg) / "modship")
    name = f"k8s-{v['K8S']}-etcd-{v['ETCD']}-kwok-{v['KWOK']}-helm-{v['HELM']}"
    return Path(cache) / name


def locate_bin_dir() -> Path:
    """``$MODSHIP_K8S_BIN`` or the build.sh cache dir; raise if any binary is missing."""
    env = os.environ.get("MODSHIP_K8S_BIN")
    bin_dir = Path(env) if env else default_root() / "bin"
    missing = [b for b in BINARIES if not os.access(bin_dir / b, os.X_OK)]
    if missing:
        raise ControlPlaneError(f"Kubernetes test binaries missing in {bin_dir}: {', '.join(missing)}; {BUILD_HINT}")
    return bin_dir


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (all held open until every one is picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


try:  # resolved in the parent: the forked child should only make the call
    _PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc
    _PRCTL = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Linux: SIGKILL the child if the test process dies without running stop()."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


def wait_for(what: str, check: Callable[[], bool], timeout: float, on_timeout: Callable[[], str] | None = None) -> None:
    """Poll ``check`` until it returns True; raise ControlPlaneError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            if check():
                return
        except ControlPlaneError:
            raise
        except Exception as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            extra = f"\n{on_timeout()}" if on_timeout else ""
            raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what}{detail}{extra}")
        time.sleep(POLL_INTERVAL)


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok, as subprocesses."""

    def __init__(
        self,
        bin_dir: Path | str | None = None,
        *,
        start_timeout: float = 90.0,
        stop_timeout: float = 10.0,
        keep_dir: bool | None = None,
    ) -> None:
        self.versions = read_versions()
        self.bin_dir = Path(bin_dir) if bin_dir else locate_bin_dir()
        self.crd_dir = self.bin_dir.parent / "crds"
        self.version = self.versions["K8S"]
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.keep_dir = bool(os.environ.get("MODSHIP_K8S_KEEP")) if keep_dir is None else keep_dir
        self.token = os.urandom(16).hex()
        self.user_token = os.urandom(16).hex()
        self.user = TEST_USER
        self.node_name = FAKE_NODE
        self.startup_seconds: float | None = None
        self._procs: list[_Proc] = []
        self._workdir: Path | None = None
        self._ports: dict[str, int] = {}

    # -- paths -------------------------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise ControlPlaneError("control plane not started")
        return self._workdir

    @property
    def kubeconfig(self) -> Path:
        """Admin (system:masters) kubeconfig."""
        return self.workdir / "admin.kubeconfig"

    @property
    def user_kubeconfig(self) -> Path:
        """Kubeconfig of the non-admin static-token user ``modship-test-user`` (no RBAC bindings)."""
        return self.workdir / "user.kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "pki" / "apiserver.crt"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self._ports['apiserver']}"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        if self._workdir is not None:
            raise ControlPlaneError("control plane already started")
        t0 = time.monotonic()
        self._workdir = Path(tempfile.mkdtemp(prefix="modship-k8s-"))
        try:
            self._prepare()
            self._start_etcd()
            self._start_apiserver()
            self._start_controllers()
            self._start_kwok()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """SIGTERM every child (newest first), SIGKILL whatever outlives the deadline, clean up."""
        procs, self._procs = self._procs, []
        for p in reversed(procs):
            if p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for p in reversed(procs):
            try:
                p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    p.popen.kill()
                p.popen.wait()
            p.log_file.close()
        if self._workdir is not None and not self.keep_dir:
            shutil.rmtree(self._workdir, ignore_errors=True)

    # -- helpers for tests -------------------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the machine's kubectl against this cluster (admin unless ``kubeconfig`` is given)."""
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise ControlPlaneError("kubectl not found on PATH")
        return self._run([kubectl, f"--kubeconfig={kubeconfig or self.kubeconfig}", *args], input, check, timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """Run the built helm against this cluster, with helm's config/cache/data in the temp dir."""
        env = {
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CONFIG_HOME": str(self.workdir / "helm" / "config"),
            "HELM_CACHE_HOME": str(self.workdir / "helm" / "cache"),
            "HELM_DATA_HOME": str(self.workdir / "helm" / "data"),
        }
        return self._run([str(self.bin_dir / "helm"), *args], None, check, timeout, env)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return f"(no log for {name})"
        text = path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- last {len(text)} lines of {path} ---\n" + "\n".join(text)

    # -- internals ---------------------------------------------------------------------------

    def _run(
        self,
        cmd: Sequence[str],
        input: str | None,
        check: bool,
        timeout: float,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **(extra_env or {})}
        res = subprocess.run(
            list(cmd), input=input, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
        if check and res.returncode != 0:
            raise subprocess.CalledProcessError(res.returncode, res.args, res.stdout, res.stderr)
        return res

    def _prepare(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        d = self.workdir
        for sub in ("pki", "logs", "etcd", "kcm", "scheduler"):
            (d / sub).mkdir(mode=0o700)
        names = ("etcd", "etcd-peer", "apiserver", "kcm", "scheduler", "kwok")
        self._ports = dict(zip(names, free_ports(len(names)), strict=True))

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (d / "sa.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        (d / "kwok.yaml").write_text("")
        (d / "tokens.csv").write_text(
            f'{self.token},{ADMIN_USER},{ADMIN_USER}-uid,"system:masters"\n'
            f"{self.user_token},{TEST_USER},{TEST_USER}-uid\n"
        )
        self._write_kubeconfig(self.kubeconfig, ADMIN_USER, self.token)
        self._write_kubeconfig(self.user_kubeconfig, TEST_USER, self.user_token)

    def _write_kubeconfig(self, path: Path, user: str, token: str) -> None:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "modship-test",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "modship-test", "context": {"cluster": "modship-test", "user": user}}],
            "current-context": "modship-test",
        }
        path.write_text(json.dumps(cfg, indent=2))  # JSON is valid YAML
        path.chmod(0o600)

    def _spawn(self, name: str, args: list[str]) -> _Proc:
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("wb")
        binary = str(self.bin_dir / args[0])
        popen = subprocess.Popen(
            [binary, *args[1:]],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl only; no locks taken in the child
        )
        proc = _Proc(name, popen, log_path, log_file)
        self._procs.append(proc)
        return proc

    def _alive(self, proc: _Proc) -> Callable[[], bool]:
        """Wrap a readiness check so an exited process fails at once, with its log."""

        def ensure() -> bool:
            if proc.popen.poll() is not None:
                raise ControlPlaneError(
                    f"{proc.name} exited with code {proc.popen.returncode}\n{self.log_tail(proc.name)}"
                )
            return True

        return ensure

    def _wait(self, proc: _Proc, what: str, check: Callable[[], bool]) -> None:
        alive = self._alive(proc)
        wait_for(
            what,
            lambda: alive() and check(),
            self.start_timeout,
            on_timeout=lambda: self.log_tail(proc.name),
        )

    def _http_ok(self, url: str, *, verify: bool, token: str | None = None) -> bool:
        if verify:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        req = urllib.request.Request(url)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _start_etcd(self) -> None:
        ep, pp = self._ports["etcd"], self._ports["etcd-peer"]
        proc = self._spawn(
            "etcd",
            [
                "etcd",
                "--name=t",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{ep}",
                f"--advertise-client-urls=http://127.0.0.1:{ep}",
                f"--listen-peer-urls=http://127.0.0.1:{pp}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{pp}",
                f"--initial-cluster=t=http://127.0.0.1:{pp}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            url = f"http://127.0.0.1:{ep}/health"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(json.load(resp).get("health") == "true")

        self._wait(proc, "etcd /health", healthy)

    def _start_apiserver(self) -> None:
        d = self.workdir
        proc = self._spawn(
            "kube-apiserver",
            [
                "kube-apiserver",
                f"--etcd-servers=http://127.0.0.1:{self._ports['etcd']}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self._ports['apiserver']}",
                f"--cert-dir={d / 'pki'}",
                f"--token-auth-file={d / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={d / 'sa.key'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                "--allow-privileged=true",
                "--endpoint-reconciler-type=none",
                "--profiling=false",
            ],
        )
        readyz = f"{self.server}/readyz"
        self._wait(
            proc,
            f"kube-apiserver {readyz}",
            lambda: self.ca_file.exists() and self._http_ok(readyz, verify=True, token=self.token),
        )

    def _start_controllers(self) -> None:
        d = self.workdir
        kc = str(self.kubeconfig)
        common = [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
        ]
        kcm = self._spawn(
            "kube-controller-manager",
            [
                "kube-controller-manager",
                *common,
                f"--secure-port={self._ports['kcm']}",
                f"--cert-dir={d / 'kcm'}",
                f"--service-account-private-key-file={d / 'sa.key'}",
                f"--root-ca-file={self.ca_file}",
                "--use-service-account-credentials=false",
                "--profiling=false",
            ],
        )
        sched = self._spawn(
            "kube-scheduler",
            [
                "kube-scheduler",
                *common,
                f"--secure-port={self._ports['scheduler']}",
                f"--cert-dir={d / 'scheduler'}",
                "--profiling=false",
            ],
        )
        self._wait(
            kcm,
            "kube-controller-manager /healthz",
            lambda: self._http_ok(f"https://127.0.0.1:{self._ports['kcm']}/healthz", verify=False),
        )
        self._wait(
            sched,
            "kube-scheduler /readyz",
            lambda: self._http_ok(f"https://127.0.0.1:{self._ports['scheduler']}/readyz", verify=False),
        )
        # Pods are rejected by the ServiceAccount admission plugin until the controllers have
        # created the namespace's default ServiceAccount.
        self._wait(
            kcm,
            "the default ServiceAccount",
            lambda: self._http_ok(
                f"{self.server}/api/v1/namespaces/default/serviceaccounts/default",
                verify=True,
                token=self.token,
            ),
        )

    def _start_kwok(self) -> None:
        proc = self._spawn(
            "kwok",
            [
                "kwok",
                f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--cidr=10.244.0.0/16",
                "--node-ip=127.0.0.1",
                "--node-lease-duration-seconds=40",
                # An explicit (empty) config, so a developer's ~/.kwok/kwok.yaml is not picked up.
                f"--config={self.workdir / 'kwok.yaml'}",
                f"--server-address=127.0.0.1:{self._ports['kwok']}",
            ],
        )
        self._wait(
            proc,
            "kwok /healthz",
            lambda: self._http_ok(f"http://127.0.0.1:{self._ports['kwok']}/healthz", verify=False),
        )
        self.kubectl("apply", "-f", "-", input=json.dumps(self._fake_node()))
        self._wait(proc, f"node {self.node_name} Ready", self._node_ready)

    def _node_ready(self) -> bool:
        out = self.kubectl("get", "node", self.node_name, "-o", "json", check=False)
        if out.returncode != 0:
            return False
        node: dict[str, Any] = json.loads(out.stdout)
        conds = node.get("status", {}).get("conditions", [])
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
        taints = node.get("spec", {}).get("taints") or []
        return ready and not any(t.get("effect") == "NoSchedule" for t in taints)

    def _fake_node(self) -> dict[str, Any]:
        resources = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/arch": "amd64",
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/hostname": self.node_name,
                    "beta.kubernetes.io/arch": "amd64",
                    "beta.kubernetes.io/os": "linux",
                    "node-role.kubernetes.io/agent": "",
                    "type": "kwok",
                },
            },
            "spec": {},
            "status": {
                "allocatable": resources,
                "capacity": resources,
                "nodeInfo": {
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "kubeletVersion": "fake",
                },
            },
        }


@contextlib.contextmanager
def control_plane(**kwargs: Any) -> Iterator[ControlPlane]:
    with ControlPlane(**kwargs) as cp:
        yield cp
