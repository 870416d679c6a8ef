"""A standalone metrics exporter whose traffic the test controls: ``python -m tests.support.exporter``.

It exports what a composed modship service exports for its requests —
``modship_requests_total{system,revision,outcome}`` and ``modship_request_duration_seconds`` — and
counts requests itself in a background thread at the rate set per revision:

    GET  /metrics                   Prometheus text format
    POST /control {"revision": "r2", "rps": 50, "error_ratio": 0.2, "latency": 0.05}
    GET  /control                   the current settings, JSON
    GET  /healthz

Counts are deterministic (fractions carry over between ticks), so over any window the error ratio is
exactly the one set, give or take one request. As in the real service, a revision's series appear
with its first request. The server side needs only the standard library and prometheus_client, so
the same file can run in a pod; ``Exporter`` (the test-side handle) imports httpx lazily.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
TICK = 0.05


@dataclass
class Traffic:
    rps: float = 0.0
    error_ratio: float = 0.0
    client_error_ratio: float = 0.0
    latency: float = 0.01  # seconds, observed for every request
    _due: float = 0.0
    _errors_due: float = 0.0
    _client_errors_due: float = 0.0


class Generator:
    """Counts requests per revision at the configured rates."""

    def __init__(self, system: str) -> None:
        self.system = system
        self.registry = CollectorRegistry()
        labels = ["system", "revision"]
        self.requests = Counter(
            "modship_requests_total", "Requests by outcome", [*labels, "outcome"], registry=self.registry
        )
        self.duration = Histogram(
            "modship_request_duration_seconds",
            "Request latency",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.traffic: dict[str, Traffic] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def set(self, revision: str, **settings: float) -> dict[str, Any]:
        limits = {"rps": 1e6, "error_ratio": 1.0, "client_error_ratio": 1.0, "latency": 60.0}
        for key, value in settings.items():
            if key not in limits or not 0 <= float(value) <= limits[key]:
                allowed = ", ".join(f"{k} in [0, {v:g}]" for k, v in limits.items())
                raise ValueError(f"{key}={value!r}: settings are {allowed}")
        with self.lock:
            t = self.traffic.setdefault(revision, Traffic())
            for key, value in settings.items():
                setattr(t, key, float(value))
            return self.settings()[revision]

    def settings(self) -> dict[str, dict[str, Any]]:
        return {r: {k: v for k, v in asdict(t).items() if not k.startswith("_")} for r, t in self.traffic.items()}

    def tick(self, dt: float) -> None:
        with self.lock:
            for revision, t in self.traffic.items():
                t._due += t.rps * dt
                n = int(t._due)
                if n == 0:
                    continue
                t._due -= n
                t._errors_due += n * t.error_ratio
                t._client_errors_due += n * t.client_error_ratio
                errors, client = int(t._errors_due), int(t._client_errors_due)
                t._errors_due -= errors
                t._client_errors_due -= client
                self._count(revision, n, errors=errors, client_errors=client, latency=t.latency)

    def _count(self, revision: str, n: int, *, errors: int, client_errors: int, latency: float) -> None:
        ok = max(0, n - errors - client_errors)
        for outcome, k in (("ok", ok), ("error", errors), ("client_error", client_errors)):
            if k:
                self.requests.labels(self.system, revision, outcome).inc(k)
        child = self.duration.labels(self.system, revision)
        for _ in range(n):
            child.observe(latency)

    def run(self) -> None:
        last = time.monotonic()
        while not self.stopped.wait(TICK):
            now = time.monotonic()
            self.tick(now - last)
            last = now


def _handler(gen: Generator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                self._send(200, generate_latest(gen.registry), CONTENT_TYPE_LATEST)
            elif self.path == "/control":
                self._send(200, json.dumps(gen.settings()).encode())
            elif self.path == "/healthz":
                self._send(200, b'{"ok": true}')
            else:
                self._send(404, b'{"error": "not found"}')

        def do_POST(self) -> None:
            if self.path != "/control":
                return self._send(404, b'{"error": "not found"}')
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                revision = str(body.pop("revision"))
                result = gen.set(revision, **body)
            except (ValueError, KeyError, TypeError) as exc:
                return self._send(400, json.dumps({"error": repr(exc)}).encode())
            self._send(200, json.dumps({revision: result}).encode())

    return Handler


def serve(port: int, *, host: str = "127.0.0.1", system: str = "topic-classifier", rates: Sequence[str] = ()) -> None:
    gen = Generator(system)
    for spec in rates:
        revision, _, rest = spec.partition("=")
        values = [float(v) for v in rest.split(":") if v]
        gen.set(revision, **dict(zip(("rps", "error_ratio", "latency"), values, strict=False)))
    threading.Thread(target=gen.run, daemon=True, name="traffic").start()
    server = ThreadingHTTPServer((host, port), _handler(gen))
    server.daemon_threads = True
    print(f"exporter for {system} on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        gen.stopped.set()
        server.server_close()


class Exporter:
    """The exporter as a subprocess on a free loopback port (test side)."""

    def __init__(self, *, system: str = "topic-classifier") -> None:
        from tests.support.services import free_port

        self.system = system
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.target}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  (lives as long as the process)

    def start(self) -> Exporter:
        from tests.support.services import http_ok, wait_until

        cmd = [
            sys.executable,
            "-m",
            "tests.support.exporter",
            "--port",
            str(self.port),
            "--system",
            self.system,
        ]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"exporter exited: {self.log.read().decode()[-2000:]}")
            return http_ok(f"{self.url}/healthz")

        wait_until(up, timeout=20, what=f"exporter on {self.url}")
        return self

    def control(self, revision: str, **settings: float) -> dict[str, Any]:
        import httpx

        r = httpx.post(f"{self.url}/control", json={"revision": revision, **settings}, timeout=5)
        r.raise_for_status()
        return dict(r.json())

    def stop(self) -> None:
        from tests.support.services import stop_process

        if self.proc is not None:
            stop_process(self.proc, grace=5)
        self.log.close()

    @contextlib.contextmanager
    def running(self) -> Iterator[Exporter]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.support.exporter", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 in a pod")
    p.add_argument("--system", default="topic-classifier")
    p.add_argument(
        "--rate",
        action="append",
        default=[],
        metavar="REV=RPS[:ERROR_RATIO[:LATENCY]]",
        help="initial traffic of a revision (repeatable)",
    )
    args = p.parse_args(argv)
    serve(args.port, host=args.host, system=args.system, rates=args.rate)


if __name__ == "__main__":
    main()
