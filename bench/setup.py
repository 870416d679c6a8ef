"""What the benchmarks run against: an embedded registry holding the example modules, built Bentos,
and the processes under test (``bentoml serve``, the modship router, nginx).

The registry (SQLite MLflow) and BENTOML_HOME live in ``$MODSHIP_CACHE/bench/<modules>`` (default
``~/.cache/modship/bench``), keyed by the example modules' build, so a second ``make bench`` registers
and builds nothing. Everything per run (logs, the private BENTOML_HOME of each server, generated
configs) goes to a scratch directory. Every process runs in its own session and is stopped, group
and all, when the ``running`` block exits, on failure too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml
from filelock import FileLock
from prometheus_client.parser import text_string_to_metric_families

from bench import load
from controller import settings
from controller.adapters import bento, factory
from controller.apply import modules, systems
from controller.errors import ModshipError
from controller.spec import system as system_spec
from examples import build_modules
from tests.support.examples import ORDER
from tests.support.services import free_port, http_ok, stop_process, wait_until

REPO = Path(__file__).resolve().parents[1]
SYSTEM = REPO / "examples" / "systems" / "topic-classifier.yaml"
MONOLITH = Path(__file__).resolve().parent / "monolith"
BENTOML = bento.BENTOML


def cache_root() -> Path:
    return Path(os.environ.get("MODSHIP_CACHE") or Path.home() / ".cache" / "modship") / "bench"


class Workspace:
    """The example modules registered in an embedded registry, and Bentos built from them."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.modules, _ = build_modules.cached()
        self.root = cache_root() / self.modules.name
        self.settings = settings.load(registry=f"sqlite:///{self.root / 'mlflow.db'}", home=str(self.root))
        self.bentoml_home = self.root / "bentoml"
        self.lock = FileLock(str(self.root) + ".lock")
        self.root.mkdir(parents=True, exist_ok=True)
        with self.lock:
            self.registry = factory.registry(self.settings)
            modules.register(self.registry, [self.modules / n for n in ORDER], skip_existing=True)

    def spec(self) -> dict[str, Any]:
        """The example system's document (a fresh copy to derive variants from)."""
        return dict(yaml.safe_load(SYSTEM.read_text()))

    def system(self, doc: dict[str, Any]) -> Path:
        """The Bento directory of a System document: checked, locked, contract-tested, built once."""
        spec = system_spec.from_document(doc, source=doc["metadata"]["name"])
        with self.lock:
            checked = systems.check(self.registry, spec, cache=self.settings.module_cache)
            systems.raise_violations(checked.report, spec.metadata.name)
            lk = systems.lock(checked)
            if not bento.exists(self.bentoml_home, lk):
                failures = systems.contract_tests(lk, checked.local)
                if failures:
                    raise ModshipError("contract tests failed:\n  " + "\n  ".join(failures))
                bento.build(lk, checked.local, bentoml_home=self.bentoml_home)
        return bento.bento_path(self.bentoml_home, lk)

    def monolith(self) -> Path:
        """The hand-written single service (``bench/monolith``) with the same model files, built once."""
        params = {
            name: yaml.safe_load((self.modules / name / "module.yaml").read_text())["runtime"]["params"]
            for name in ("text-encoder-v1", "topic-head-v1", "topic-head-v2", "confidence-v1")
        }
        files = {
            "service.py": MONOLITH / "service.py",
            "bentofile.yaml": MONOLITH / "bentofile.yaml",
            "models/model.onnx": self.modules / "text-encoder-v1" / "model.onnx",
            "models/tokenizer.json": self.modules / "text-encoder-v1" / "tokenizer.json",
            "models/head.npz": self.modules / "topic-head-v1" / "head.npz",
            "models/head-fallback.npz": self.modules / "topic-head-v2" / "head.npz",
        }
        config = yaml.safe_dump(params, sort_keys=True).encode()
        h = hashlib.sha256(config)
        for rel in sorted(files):
            h.update(rel.encode() + files[rel].read_bytes())
        version = h.hexdigest()[:16]
        path = self.bentoml_home / "bentos" / "topic-monolith" / version
        with self.lock:
            if (path / "bento.yaml").exists():
                return path
            with tempfile.TemporaryDirectory(prefix="bench-monolith-") as tmp:
                ctx = Path(tmp)
                for rel, src in files.items():
                    (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, ctx / rel)
                (ctx / "models" / "config.yaml").write_bytes(config)
                cmd = [BENTOML, "build", "--version", version, str(ctx)]
                proc = subprocess.run(cmd, cwd=ctx, env=bento.env(self.bentoml_home), capture_output=True, text=True)
                if proc.returncode != 0:
                    raise ModshipError(f"bentoml build of the monolith failed: {proc.stderr[-2000:]}")
        return path


class Process:
    """A server in its own session on a free loopback port, ready when ``url + ready`` answers 200."""

    def __init__(
        self, name: str, cmd: list[str], *, port: int, ready: str, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name, self.cmd, self.port, self.log, self.env = name, cmd, port, log, env
        self.url = f"http://127.0.0.1:{port}"
        self.ready_url = self.url + ready
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        _LIVE.add(self)
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=REPO,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not started"
        return self.proc.pid

    def target(self, *backends: Process) -> load.Target:
        """What ``load.side_by_side`` measures: this process's URL, CPU of it and of ``backends``."""
        return load.Target(self.url, (self.pid, *(b.pid for b in backends)))

    def wait_ready(self, timeout: float = 180) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            return http_ok(self.ready_url)

        wait_until(ready, timeout=timeout, interval=0.2, what=f"{self.name} ready")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=15)
        _LIVE.discard(self)


_LIVE: set[Process] = set()


def stop_all() -> None:
    """Stop every process still running (from a signal handler: an exception raised there can be
    swallowed when it lands in a finaliser, so cleanup must not depend on unwinding)."""
    for p in list(_LIVE):
        with contextlib.suppress(Exception):
            p.stop()


class Bento(Process):
    """``bentoml serve`` of a built Bento with a private BENTOML_HOME; ``env`` adds variables, and a
    ``None`` value removes one (``MODSHIP_TRACING=None``: the default as shipped, console)."""

    def __init__(self, name: str, bento_dir: Path, scratch: Path, **env: str | None) -> None:
        port = free_port()
        full = bento.serve_env(scratch / f"{name}.bentoml")
        for k, v in env.items():
            if v is None:
                full.pop(k, None)
            else:
                full[k] = v
        cmd = bento.serve_command(bento_dir, host="127.0.0.1", port=port)
        super().__init__(name, cmd, port=port, ready="/readyz", log=scratch / f"{name}.log", env=full)

    def counter(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples carrying ``labels``, from ``/metrics``."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and labels.items() <= s.labels.items()
        )


class Router(Process):
    """The modship router (``controller.entrypoints.router``) on a free port."""

    def __init__(self, name: str, system: str, scratch: Path) -> None:
        port = free_port()
        self.system = system
        cmd = [sys.executable, "-m", "controller.entrypoints.router", "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--system", system, "--state", str(scratch / f"{name}-state.json"), "--log-level", "WARNING"]
        super().__init__(name, cmd, port=port, ready="/-/modship/healthz", log=scratch / f"{name}.log")

    def configure(
        self, stable: str, canary: str | None = None, weight: float = 0, *, sticky: str | None = None
    ) -> None:
        """Route to ``stable``, and ``weight`` percent to ``canary`` when given (revisions are named
        after their role: both may run the same Bento); by the hash of the ``sticky`` header when
        given, else drawn per request."""
        doc: dict[str, Any] = {"system": self.system, "generation": 1, "stable": {"revision": "stable", "url": stable}}
        if canary is not None:
            doc |= {"canary": {"revision": "canary", "url": canary}, "weight": weight}
        if sticky is not None:
            doc["sticky"] = {"header": sticky}
        httpx.put(f"{self.url}/-/modship/config", json=doc, timeout=10).raise_for_status()


class FixedCost(Process):
    """``tests.support.upstream`` answering one request at a time, each after the same ``ms``: a
    single-worker model without the spread of a real one (requests at once queue). ``on_cpu`` burns
    the time on the CPU (a model on the shared cores); otherwise the worker waits off the CPU (a
    model on an accelerator or on cores of its own)."""

    def __init__(self, name: str, ms: float, scratch: Path, *, on_cpu: bool) -> None:
        port = free_port()
        cmd = [sys.executable, "-m", "tests.support.upstream", "--port", str(port), "--revision", name]
        cost = ["--busy-ms" if on_cpu else "--hold-ms", str(ms)]
        super().__init__(name, [*cmd, *cost], port=port, ready="/readyz", log=scratch / f"{name}.log")


class RelayFloor(Process):
    """``bench/relay_floor.py``: the least a Python proxy on uvloop costs, relaying to one upstream."""

    def __init__(self, name: str, upstream_port: int, scratch: Path) -> None:
        port = free_port()
        cmd = [sys.executable, "-m", "bench.relay_floor", "--port", str(port), "--upstream-port", str(upstream_port)]
        super().__init__(name, cmd, port=port, ready="/readyz", log=scratch / f"{name}.log")


_NGINX = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  client_body_buffer_size 1m;
  client_max_body_size 4m;
  upstream system {{
    server {stable} weight={w_stable};
    server {canary} weight={w_canary};
    keepalive 32;
  }}
  server {{
    listen 127.0.0.1:{port};
    location = /-/nginx/healthz {{ return 200 "ok"; }}
    location / {{
      proxy_pass http://system;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_read_timeout 60s;
    }}
  }}
}}
"""


class Nginx(Process):
    """nginx in the foreground with a generated config: a weighted upstream pair with keep-alive."""

    def __init__(
        self, name: str, stable: str, canary: str, weight: int, scratch: Path, *, single_process: bool = False
    ) -> None:
        port = free_port()
        d = scratch / name
        d.mkdir(parents=True, exist_ok=True)
        conf = _NGINX.format(
            dir=d,
            port=port,
            stable=stable.removeprefix("http://"),
            canary=canary.removeprefix("http://"),
            w_stable=100 - weight,
            w_canary=weight,
        )
        (d / "nginx.conf").write_text(conf)
        daemon = "daemon off;" + (" master_process off;" if single_process else "")  # single: one process, no worker
        cmd = ["nginx", "-e", str(d / "error.log"), "-c", str(d / "nginx.conf"), "-p", str(d), "-g", daemon]
        super().__init__(name, cmd, port=port, ready="/-/nginx/healthz", log=scratch / f"{name}.log")


@contextlib.contextmanager
def running(*procs: Process) -> Iterator[None]:
    """Start every process at once, wait until all are ready, stop them all when the block exits."""
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready()
        yield
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                p.stop()
