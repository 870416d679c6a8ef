"""Latency, every input sent through every target in turn.

``load.side_by_side`` measures each target in runs of a few seconds, one after the other. Its
throughput and CPU figures are robust, but a p50 taken that way moves by a millisecond or more
between two runs of the same target on this machine (the service drifts: caches, the other
process, the host), so the difference of two p50s in the same round is mostly that drift when a
proxy adds a few tenths of a millisecond. Here each input goes to every target back to back, in a
random order, on kept connections (one per target, slot and backend), so all targets see the same
inputs at the same moments.

With several connections, a round sends that many inputs at once through one target, waits for
all the answers, then does the same through the next target: what a target adds is then the
median over rounds of how much longer the round's requests took on average.

A target is one port (a proxy or the service), or several with weights: a client that splits by
itself (the baseline of a proxy's split, without the proxy), drawing a backend per request, or
``keyed``: by the bucket of the input's key (``KEY``, a header every request carries) as the
router's sticky split computes it, so that a router splitting by that header sends every input
where the client does, and the pairing holds per input.

The client is a few lines of Python on blocking sockets and one selector: its own time per
request (a few tens of microseconds) is the same for every target, so it cancels in the
differences.
"""

from __future__ import annotations

import json
import random
import select
import selectors
import socket
import statistics
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.load import Inputs
from controller.adapters.router import split

_READ = 65536


@dataclass(frozen=True, slots=True)
class Split:
    """Where a target's requests go: ``ports[i]`` with probability ``weights[i]`` (they sum to 1),
    drawn per request; or, ``keyed``, by the input's key (``KEY``) as the router's sticky split
    decides (two ports: the second when the key's bucket is below its weight), so that a router
    splitting by that header sends each input where this client does."""

    ports: tuple[int, ...]
    weights: tuple[float, ...] = (1.0,)
    path: str = "/predict"
    keyed: bool = False

    def pick(self, key: bytes, draw: random.Random) -> int:
        """The index of the port this request goes to."""
        if len(self.ports) == 1:
            return 0
        if self.keyed:
            return int(split.bucket(key) < self.weights[1] * 100)
        return draw.choices(range(len(self.ports)), self.weights)[0]


KEY = "x-bench-key"  # a key per input, sent to every target: the same for all of them


class _Conn:
    """One kept HTTP/1.1 connection; answers are framed by Content-Length (what every target sends)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = self._connect()
        self.buf = b""
        self.size = -1  # the answer's body length, once its head is read
        self.start = 0.0

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def send(self, path: str, body: bytes, key: bytes) -> None:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: application/json\r\n"
        head += f"{KEY}: {key.decode()}\r\n"
        self.buf, self.size = b"", -1
        if select.select([self.sock], [], [], 0)[0]:  # closed while idle (a server's keep-alive timeout)
            self.sock.close()
            self.sock = self._connect()
        self.start = time.perf_counter()
        self.sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)

    def feed(self) -> float | None:
        """Read what has arrived: the answer's milliseconds once it is whole, else None."""
        data = self.sock.recv(_READ)
        if not data:
            raise RuntimeError(f"port {self.port}: connection closed mid-answer")
        self.buf += data
        if self.size < 0:
            if (end := self.buf.find(b"\r\n\r\n")) < 0:
                return None
            head, self.buf = self.buf[:end], self.buf[end + 4 :]
            lengths = [ln for ln in head.lower().split(b"\r\n") if ln.startswith(b"content-length:")]
            if head[9:12] != b"200" or len(lengths) != 1:
                raise RuntimeError(f"port {self.port}: unexpected answer {head[:200]!r}")
            self.size = int(lengths[0].split(b":", 1)[1])
        if len(self.buf) < self.size:
            return None
        if len(self.buf) != self.size:
            raise RuntimeError(f"port {self.port}: {len(self.buf) - self.size} bytes more than the answer")
        return (time.perf_counter() - self.start) * 1000

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


def _round(sel: selectors.BaseSelector, sent: Sequence[_Conn]) -> list[float]:
    """Wait for the answers to requests just sent, one per connection: their milliseconds, in order."""
    got: dict[int, float] = {}
    for k, conn in enumerate(sent):
        sel.register(conn.sock, selectors.EVENT_READ, k)
    try:
        while len(got) < len(sent):
            ready = sel.select(timeout=30)
            if not ready:
                raise RuntimeError(f"ports {sorted({c.port for c in sent})}: no answer in 30 s")
            for key, _ in ready:
                if (ms := sent[key.data].feed()) is not None:
                    got[key.data] = ms
                    sel.unregister(key.fileobj)
    finally:
        for conn in sent:
            if conn.sock in sel.get_map():
                sel.unregister(conn.sock)
    return [got[k] for k in range(len(sent))]


def latencies(
    targets: Mapping[str, Split], inputs: Inputs, rounds: int, *, connections: int = 1, seed: int = 7
) -> dict[str, list[float]]:
    """Milliseconds per request of each target, in rounds: in each, ``connections`` inputs are sent at
    once through every target in turn (the next target once all of them are answered). Round ``r``
    is ``[r * connections:(r + 1) * connections]`` of every target's list."""
    names = list(targets)
    # one kept connection per target, slot (requests in flight at once) and backend
    conns = {name: [[_Conn(p) for p in s.ports] for _ in range(connections)] for name, s in targets.items()}
    draw = random.Random(seed)
    bodies = _bodies(inputs, rounds * connections, names)
    nonce = uuid.uuid4().hex[:8]
    keys = [f"{nonce}-{i}".encode() for i in range(rounds * connections)]
    out: dict[str, list[float]] = {name: [] for name in names}
    sel = selectors.DefaultSelector()
    try:
        for r in range(rounds):
            order = names[:]
            draw.shuffle(order)  # not a rotation: then every target would always follow the same one
            for name in order:
                t = targets[name]
                sent = []
                for k, slot in enumerate(conns[name]):
                    i = r * connections + k
                    conn = slot[t.pick(keys[i], draw)]
                    conn.send(t.path, bodies[i][name], keys[i])
                    sent.append(conn)
                out[name] += _round(sel, sent)
    finally:
        sel.close()
        for slots in conns.values():
            for slot in slots:
                for c in slot:
                    c.close()
    return out


@dataclass(frozen=True, slots=True)
class Added:
    """What ``target`` adds to ``baseline`` at ``connections``: the difference of their p50s, and the
    median over rounds of how much longer the round's requests took on average (at one connection:
    the median of the per-input differences), with a 95 % interval for it (bootstrap over rounds).
    The two agree when the measurement is sound and the service answers every request alike; with
    requests queueing at a service (several connections), the p50 of all requests jumps between
    queue positions and only the paired figure is meaningful."""

    target: str
    baseline: str
    connections: int
    p50_ms: float
    paired_ms: float
    low_ms: float
    high_ms: float


def added(
    lat: Mapping[str, Sequence[float]], target: str, baseline: str, *, connections: int = 1, seed: int = 7
) -> Added:
    a, b = lat[target], lat[baseline]
    c = connections
    if len(a) != len(b) or len(a) % c:
        raise ValueError(f"{target} and {baseline}: {len(a)} and {len(b)} requests, not rounds of {c}")
    per_round = [statistics.fmean(a[i : i + c]) - statistics.fmean(b[i : i + c]) for i in range(0, len(a), c)]
    draw = random.Random(seed)
    boot = sorted(statistics.median(draw.choices(per_round, k=len(per_round))) for _ in range(_RESAMPLES))
    return Added(
        target,
        baseline,
        c,
        round(statistics.median(a) - statistics.median(b), 3),
        round(statistics.median(per_round), 3),
        round(boot[int(_RESAMPLES * 0.025)], 3),
        round(boot[int(_RESAMPLES * 0.975) - 1], 3),
    )


_RESAMPLES = 1000


def figures(lat: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    return {
        name: {
            "p50_ms": round(statistics.median(v), 3),
            "p90_ms": round(statistics.quantiles(v, n=10)[-1], 3),
            "requests": len(v),
        }
        for name, v in lat.items()
    }
