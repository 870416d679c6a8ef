"""A small real HTTP/1.1 server that answers ``POST /predict`` like a composed service, for router tests.

    python -m tests.support.upstream --port P --revision r1 --label sport [--delay 0.01] [--busy-ms 8] [--hold-ms 8]

It is told how to misbehave at run time with ``POST /-/control`` (JSON, every field optional):
``mode`` (``ok``; ``fail``: answer 500; ``close``: drop the connection without answering;
``truncate``: drop it halfway through the body; ``hang``: never answer), ``label``, ``confidence``,
``passed`` (the evaluator's verdict), ``stepFallback`` (report a step fallback), ``delay`` (seconds
before answering, other requests served meanwhile), ``busyMs`` / ``holdMs`` (milliseconds burned on
the CPU / waited off it before answering, one request at a time: a single worker), ``chunked``
(answer with Transfer-Encoding: chunked). ``GET /-/stats`` counts the
predictions it received (``requests``, ``mirrored``). Written on raw asyncio streams so it can drop
connections at will.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.support.services import free_port, stop_process, wait_until

REASONS = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}


class Behaviour:
    def __init__(self, revision: str, label: str, delay: float, busy_ms: float, hold_ms: float = 0.0) -> None:
        self.revision = revision
        self.mode = "ok"
        self.label = label
        self.confidence = 0.9
        self.passed = True
        self.step_fallback = False
        self.delay = delay
        self.busy_ms = busy_ms
        self.hold_ms = hold_ms
        self.chunked = False
        self.requests = 0
        self.mirrored = 0

    def control(self, doc: dict[str, Any]) -> None:
        for key, attr in (
            ("mode", "mode"),
            ("label", "label"),
            ("confidence", "confidence"),
            ("passed", "passed"),
            ("stepFallback", "step_fallback"),
            ("delay", "delay"),
            ("chunked", "chunked"),
            ("busyMs", "busy_ms"),
            ("holdMs", "hold_ms"),
        ):
            if key in doc:
                setattr(self, attr, doc[key])

    def predict(self, body: bytes) -> dict[str, Any]:
        texts = json.loads(body or b"{}").get("text", "")
        n = len(texts) if isinstance(texts, list) else 1
        return {
            "outputs": {"label": [self.label] * n},
            "prediction": [{"label": self.label, "confidence": self.confidence}] * n,
            "evaluation": [{"step": "evaluator", "score": self.confidence, "passed": self.passed}],
            "meta": {
                "system": "test",
                "revision": self.revision,
                "fallbacks": [{"step": "head", "reason": "error", "used": "topic-head@2"}]
                if self.step_fallback
                else [],
            },
        }


async def _respond(
    b: Behaviour, method: str, target: str, headers: dict[str, str], body: bytes
) -> tuple[int, bytes] | None:
    if target == "/readyz":
        return 200, b'"ready"'
    if target == "/-/control" and method == "POST":
        b.control(json.loads(body))
        return 200, b"{}"
    if target == "/-/stats":
        return 200, json.dumps({"requests": b.requests, "mirrored": b.mirrored}).encode()
    if target != "/predict" or method != "POST":
        return 404, b'{"error": "not found"}'
    b.requests += 1
    b.mirrored += headers.get("x-modship-mirror") == "1"
    if b.busy_ms:  # a CPU-bound model: block the loop like a single worker would
        end = time.perf_counter() + b.busy_ms / 1000
        while time.perf_counter() < end:
            pass
    if b.hold_ms:  # a single worker waiting off the CPU (an accelerator): block the loop, sleeping
        time.sleep(b.hold_ms / 1000)
    if b.delay:
        await asyncio.sleep(b.delay)
    if b.mode == "hang":
        await asyncio.sleep(3600)
    if b.mode == "close":
        return None
    if b.mode == "fail":
        return 500, json.dumps({"error": "step head failed", "revision": b.revision}).encode()
    return 200, json.dumps(b.predict(body)).encode()


async def _connection(b: Behaviour, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            answer = await _respond(b, method, target, headers, body)
            if answer is None:
                writer.transport.abort()
                return
            status, payload = answer
            top = (
                f"HTTP/1.1 {status} {REASONS[status]}\r\ncontent-type: application/json\r\n"
                f"x-modship-revision: {b.revision}\r\n"
            )
            if b.mode == "truncate" and target == "/predict":  # half the promised body, then a reset
                writer.write(f"{top}content-length: {len(payload)}\r\n\r\n".encode() + payload[:10])
                await writer.drain()
                writer.transport.abort()
                return
            if b.chunked and target == "/predict":
                half = len(payload) // 2
                chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (payload[:half], payload[half:]))
                writer.write(f"{top}transfer-encoding: chunked\r\n\r\n".encode() + chunks + b"0\r\n\r\n")
            else:
                writer.write(f"{top}content-length: {len(payload)}\r\n\r\n".encode() + payload)
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def _serve(port: int, b: Behaviour) -> None:
    server = await asyncio.start_server(lambda r, w: _connection(b, r, w), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--revision", required=True)
    p.add_argument("--label", default="sport")
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--busy-ms", type=float, default=0.0)
    p.add_argument("--hold-ms", type=float, default=0.0)
    a = p.parse_args()
    import uvloop

    uvloop.run(_serve(a.port, Behaviour(a.revision, a.label, a.delay, a.busy_ms, a.hold_ms)))


class Upstream:
    """The server above as a subprocess on a free loopback port."""

    def __init__(
        self, revision: str, *, label: str = "sport", log_dir: Path, delay: float = 0.0, busy_ms: float = 0.0
    ) -> None:
        self.revision = revision
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
            "--port",
            str(self.port),
            "--revision",
            revision,
            "--label",
            label,
            "--delay",
            str(delay),
            "--busy-ms",
            str(busy_ms),
        ]
        self.log = log_dir / f"upstream-{revision}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Upstream:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.upstream", *self.args],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        wait_until(self._ready, timeout=20, interval=0.05, what=f"upstream {self.revision}")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"upstream exited: {self.log.read_text()[-2000:]}")
        return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200

    def control(self, **doc: Any) -> None:
        httpx.post(f"{self.url}/-/control", json=doc, timeout=5).raise_for_status()

    def stats(self) -> dict[str, int]:
        return dict(httpx.get(f"{self.url}/-/stats", timeout=5).json())

    def kill(self) -> None:
        """SIGKILL, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=5)

    @contextlib.contextmanager
    def running(self) -> Iterator[Upstream]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


if __name__ == "__main__":
    main()
