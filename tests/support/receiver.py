"""A real HTTP receiver in a thread, for notifications and gates: it answers, fails, is slow, or is
down, as a test sets it."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    url: str
    requests: list[Request] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0
    fail_first: int = 0  # answer 503 to this many requests first
    answer: Callable[[Request], int] | None = None  # decides the status when set

    def wait_for(self, n: int, *, timeout: float = 10.0) -> list[Request]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < n:
            assert time.monotonic() < deadline, f"{len(self.requests)} of {n} requests arrived"
            time.sleep(0.01)
        return self.requests


@contextmanager
def receiving() -> Iterator[Receiver]:
    rec: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            req = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(n), time.time())
            rec.requests.append(req)
            if rec.delay:
                time.sleep(rec.delay)  # the receiver is slow: this is what is being tested, not a sync
            if rec.fail_first > 0:
                rec.fail_first -= 1
                code = 503
            else:
                code = rec.answer(req) if rec.answer else rec.status
            try:
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
            except OSError:
                pass  # the client gave up (timeout)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    rec = Receiver(f"http://127.0.0.1:{server.server_address[1]}/hook")
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


def down_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"
