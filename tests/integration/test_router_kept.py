"""A SIGKILLed router loses no request: its supervisor keeps the client connections and the journal of
what the router read and had not answered; the restarted router resumes them
(``controller.adapters.connkeep``). Real processes: the supervisor, the router, an upstream that
takes 50 ms per answer (so requests are always in flight when the router is killed), and clients
on keep-alive connections, on a fresh connection per request, and pipelining three at a time.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from controller.adapters.local_units import Proc, Units
from tests.support.services import free_port, http_ok, wait_until
from tests.support.upstream import Upstream

pytestmark = pytest.mark.slow
KILLS = int(os.environ.get("MODSHIP_ROUTER_KILLS", "8"))


class Traffic:
    """Client threads; each request asks for ``k`` predictions and checks it got ``k`` back, so an
    answer given twice (and read as the next request's) is caught, not only errors."""

    def __init__(self, url: str, port: int) -> None:
        self.url, self.port = url, port
        self.stop = threading.Event()
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def start(self, *, keep_alive: int, fresh: int, pipelined: int) -> Traffic:
        kinds: list[tuple[str, Callable[[random.Random], None]]] = [("keep-alive", self._keep_alive)] * keep_alive
        kinds += [("fresh", self._fresh)] * fresh + [("pipelined", self._pipelined)] * pipelined
        for i, (name, fn) in enumerate(kinds):
            t = threading.Thread(target=self._loop, args=(name, fn, random.Random(i)), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def _loop(self, name: str, fn: Callable[[random.Random], None], rng: random.Random) -> None:
        while not self.stop.is_set():
            try:
                fn(rng)
            except Exception as exc:  # a failed client request: what this test is about
                with self.lock:
                    self.failures.append(f"{name}: {type(exc).__name__}: {exc}")

    def _ok(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def _keep_alive(self, rng: random.Random) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                k = rng.randint(1, 5)
                r = client.post("/predict", json={"text": ["x"] * k})
                _check(r.status_code, r.content, k)
                self._ok("keep-alive")

    def _fresh(self, rng: random.Random) -> None:
        k = rng.randint(1, 5)
        r = httpx.post(f"{self.url}/predict", json={"text": ["x"] * k}, headers={"connection": "close"}, timeout=30)
        _check(r.status_code, r.content, k)
        self._ok("fresh")

    def _pipelined(self, rng: random.Random) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            while not self.stop.is_set():
                ks = [rng.randint(1, 5) for _ in range(3)]
                s.sendall(b"".join(_request(k) for k in ks))
                reader = s.makefile("rb")
                for k in ks:
                    status, body = _response(reader)
                    _check(status, body, k)
                self._ok("pipelined", len(ks))

    def done(self) -> int:
        with self.lock:
            return sum(self.counts.values())

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def _request(k: int) -> bytes:
    body = json.dumps({"text": ["x"] * k}).encode()
    head = f"POST /predict HTTP/1.1\r\nhost: router\r\ncontent-type: application/json\r\ncontent-length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


def _response(reader: object) -> tuple[int, bytes]:
    readline, read = reader.readline, reader.read  # type: ignore[attr-defined]
    status_line = readline()
    if not status_line:
        raise ConnectionError("connection closed before the answer")
    length = 0
    while (line := readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return int(status_line.split()[1]), read(length)


def _check(status: int, body: bytes, k: int) -> None:
    if status != 200:
        raise AssertionError(f"status {status}: {body[:200]!r}")
    got = len(json.loads(body)["prediction"])
    if got != k:
        raise AssertionError(f"asked for {k} predictions, got {got}: an answer meant for another request")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def held(pid: int) -> int:
    """TCP connections (not listening sockets) among the process' fds."""
    links = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    connected = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A":  # 0A: LISTEN
                connected.add(f"socket:[{cols[9]}]")
    return len(links & connected)


@pytest.fixture
def router(tmp_path: Path) -> Iterator[tuple[Units, Proc, Upstream]]:
    units = Units(tmp_path / "units", grace=2.0)
    with Upstream("r1", log_dir=tmp_path, delay=0.05).running() as up:
        port = free_port()
        cmd = [sys.executable, "-m", "controller.entrypoints.router", "--port", str(port), "--system", "s"]
        cmd += ["--state", str(tmp_path / "state.json")]
        log, listen = tmp_path / "router.log", f"127.0.0.1:{port}"
        pid, st, record = units.spawn("router", cmd, dict(os.environ), log, listen=listen)
        p = Proc("router", pid, port, time.time(), [], start=st, record=record)
        try:
            wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/-/modship/healthz"), timeout=30, what="the router")
            doc = {"system": "s", "generation": 1, "stable": {"revision": "r1", "url": up.url}}
            httpx.put(f"http://127.0.0.1:{port}/-/modship/config", json=doc, timeout=10).raise_for_status()
            yield units, p, up
        finally:
            units.stop([p])


def test_sigkilled_router_loses_no_request_and_its_supervisor_leaks_no_fd(
    router: tuple[Units, Proc, Upstream],
) -> None:
    units, p, up = router
    baseline = wait_until(lambda: fds(p.pid) if held(p.pid) == 0 else None, timeout=20, what="no connection held")
    traffic = Traffic(f"http://127.0.0.1:{p.port}", p.port).start(keep_alive=3, fresh=2, pipelined=1)
    try:
        wait_until(lambda: traffic.done() > 30, timeout=60, what="traffic flowing")
        big = httpx.post(f"http://127.0.0.1:{p.port}/predict", json={"text": ["x" * 100_000]}, timeout=30)
        assert big.status_code == 200  # over a journal slot: served, just not replayable
        assert held(p.pid) >= 4  # the keep-alive and pipelining connections are held
        for i in range(KILLS):
            wait_until(_more(traffic, 20), timeout=60, what=f"traffic before kill {i + 1}")
            main = next(m["pid"] for m in units.members(p) if m["process"] == "router")
            os.kill(main, signal.SIGKILL)
            wait_until(lambda: units.restarted(p), timeout=30, what=f"restart {i + 1} reported")
        wait_until(_more(traffic, 30), timeout=60, what="traffic after the last kill")
    finally:
        traffic.finish()
    print(f"{KILLS} kills; answered {dict(traffic.counts)}; failed {len(traffic.failures)}")
    assert traffic.failures == [], traffic.failures[:10]
    resumed = [int(m) for m in re.findall(r"(\d+) connections resumed", (up.log.parent / "router.log").read_text())]
    assert len(resumed) == KILLS + 1 and sum(resumed) >= KILLS  # each new router took over the connections
    assert units.running(p)
    # every client closed: the supervisor holds no connection any more
    back = f"the supervisor back to {baseline} fds"
    wait_until(lambda: held(p.pid) == 0 and fds(p.pid) == baseline, timeout=20, what=back)


def _more(traffic: Traffic, n: int) -> Callable[[], bool]:
    target = traffic.done() + n
    return lambda: traffic.done() >= target
