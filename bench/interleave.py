"""Latency at one connection, every input sent through every target in turn.

``load.side_by_side`` measures each target in runs of a few seconds, one after the other. Its
throughput and CPU figures are robust, but a p50 taken that way moves by a millisecond or more
between two runs of the same target on this machine (the service drifts: caches, the other
process, the host), so the difference of two p50s in the same round is mostly that drift when a
proxy adds a few tenths of a millisecond. Here each input goes to every target back to back, in a
random order, on kept connections (one per target and backend), so all targets see the same
inputs at the same moments; the p50 of each is over all of its requests, and the difference of two
p50s is what one target adds to the other.

A target is one port (a proxy or the service), or several with weights: a client that splits by
itself, drawing a backend per request (the baseline of a proxy's split, without the proxy).

The client is a few lines of Python on blocking sockets: its own time per request (a few tens of
microseconds) is the same for every target, so it cancels in the differences.
"""

from __future__ import annotations

import json
import random
import socket
import statistics
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.load import Inputs

_READ = 65536


@dataclass(frozen=True, slots=True)
class Split:
    """Where a target's requests go: ``ports[i]`` with probability ``weights[i]`` (they sum to 1)."""

    ports: tuple[int, ...]
    weights: tuple[float, ...] = (1.0,)
    path: str = "/predict"


class _Conn:
    """One kept HTTP/1.1 connection; answers are framed by Content-Length (what every target sends)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def post(self, path: str, body: bytes) -> None:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: application/json\r\n"
        self.sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        buf = b""
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += self._recv()
        head_bytes, rest = buf[:end], buf[end + 4 :]
        status = head_bytes[9:12]
        lengths = [ln for ln in head_bytes.lower().split(b"\r\n") if ln.startswith(b"content-length:")]
        if status != b"200" or len(lengths) != 1:
            raise RuntimeError(f"port {self.port}: unexpected answer {head_bytes[:200]!r}")
        size = int(lengths[0].split(b":", 1)[1])
        while len(rest) < size:
            rest += self._recv()
        if len(rest) != size:
            raise RuntimeError(f"port {self.port}: {len(rest) - size} bytes more than the answer")

    def _recv(self) -> bytes:
        data = self.sock.recv(_READ)
        if not data:
            raise RuntimeError(f"port {self.port}: connection closed mid-answer")
        return data

    def close(self) -> None:
        self.sock.close()


def _bodies(inputs: Inputs, n: int, names: Sequence[str]) -> list[dict[str, bytes]]:
    """The body of input ``i`` for each target (unique texts carry a tag per target and input)."""
    nonce = uuid.uuid4().hex[:8]
    out = []
    for i in range(n):
        if inputs.bodies:
            raw = inputs.bodies[i % len(inputs.bodies)].encode()
            out.append(dict.fromkeys(names, raw))
            continue
        text = inputs.texts[i % len(inputs.texts)]
        out.append(
            {
                name: json.dumps({"text": f"[{nonce}-{k}-{i}] {text}" if inputs.unique else text}).encode()
                for k, name in enumerate(names)
            }
        )
    return out


def latencies(targets: Mapping[str, Split], inputs: Inputs, n: int, *, seed: int = 7) -> dict[str, list[float]]:
    """Milliseconds per request of each target: ``n`` inputs, each through every target in turn."""
    names = list(targets)
    conns = {name: [_Conn(p) for p in s.ports] for name, s in targets.items()}
    draw = random.Random(seed)
    bodies = _bodies(inputs, n, names)
    out: dict[str, list[float]] = {name: [] for name in names}
    try:
        for i in range(n):
            order = names[:]
            draw.shuffle(order)  # not a rotation: then every target would always follow the same one
            for name in order:
                t = targets[name]
                conn = conns[name][0] if len(t.ports) == 1 else draw.choices(conns[name], t.weights)[0]
                start = time.perf_counter()
                conn.post(t.path, bodies[i][name])
                out[name].append((time.perf_counter() - start) * 1000)
    finally:
        for cs in conns.values():
            for c in cs:
                c.close()
    return out


@dataclass(frozen=True, slots=True)
class Added:
    """What ``target`` adds to ``baseline``: the difference of their p50s, and the median of the
    per-input differences (the two agree when the measurement is sound)."""

    target: str
    baseline: str
    p50_ms: float
    paired_ms: float


def added(lat: Mapping[str, Sequence[float]], target: str, baseline: str) -> Added:
    a, b = lat[target], lat[baseline]
    return Added(
        target,
        baseline,
        round(statistics.median(a) - statistics.median(b), 3),
        round(statistics.median(x - y for x, y in zip(a, b, strict=True)), 3),
    )


def figures(lat: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    return {
        name: {
            "p50_ms": round(statistics.median(v), 3),
            "p90_ms": round(statistics.quantiles(v, n=10)[-1], 3),
            "requests": len(v),
        }
        for name, v in lat.items()
    }
