"""``bench.interleave``: every input through every target in turn, a client's own split drawn per
request, and what one target adds to another."""

from __future__ import annotations

import json
import random
import select
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench import interleave, load
from controller.adapters.router import split


class _Server:
    """A keep-alive HTTP/1.1 server on a free port that records the bodies and keys it was sent, and
    how many requests it held at once (each is held ``hold`` seconds)."""

    def __init__(self, hold: float = 0.0) -> None:
        self.bodies: list[bytes] = []
        self.keys: list[str] = []
        self.most = 0
        seen, keys, lock = self.bodies, self.keys, threading.Lock()
        now = [0]
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes

            def do_POST(self) -> None:
                seen.append(self.rfile.read(int(self.headers["Content-Length"])))
                keys.append(self.headers[interleave.KEY])
                with lock:
                    now[0] += 1
                    server.most = max(server.most, now[0])
                time.sleep(hold)
                with lock:
                    now[0] -= 1
                body = b'{"prediction": {"label": "sport"}}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[list[_Server]]:
    made = [_Server() for _ in range(3)]
    yield made
    for s in made:
        s.stop()


def test_every_input_goes_through_every_target_and_a_split_is_drawn_per_request(servers: list[_Server]) -> None:
    a, b, c = servers
    targets = {"one": interleave.Split((a.port,)), "split": interleave.Split((b.port, c.port), (0.8, 0.2))}
    lat = interleave.latencies(targets, load.Inputs(("first text", "second text"), unique=True), 200)

    assert {name: len(v) for name, v in lat.items()} == {"one": 200, "split": 200}
    assert all(ms > 0 for v in lat.values() for ms in v)
    assert len(a.bodies) == 200 and len(b.bodies) + len(c.bodies) == 200
    assert 20 <= len(c.bodies) <= 60  # 20 % of 200, drawn
    texts = [json.loads(body)["text"] for body in a.bodies + b.bodies + c.bodies]
    assert len(set(texts)) == 400  # unique inputs: a tag per target and input
    assert texts[0].endswith("first text") and texts[1].endswith("second text")
    assert len(set(a.keys)) == 200 and set(a.keys) == set(b.keys + c.keys)  # a key per input, the same for all


def test_a_keyed_split_sends_each_input_where_the_routers_sticky_split_does(servers: list[_Server]) -> None:
    a, b, _ = servers
    targets = {"keyed": interleave.Split((a.port, b.port), (0.8, 0.2), keyed=True)}
    interleave.latencies(targets, load.Inputs(("text",), unique=True), 300)

    sticky = split.Split(canary=True, weight=20, sticky_header=interleave.KEY.encode())

    def routed(key: str) -> bool:
        return split.to_canary(sticky, [(interleave.KEY.encode(), key.encode())], lambda: 0.0)

    assert b.keys and a.keys
    assert all(routed(k) for k in b.keys) and not any(routed(k) for k in a.keys)


def test_with_several_connections_a_round_sends_them_at_once_and_waits_for_all() -> None:
    held = _Server(hold=0.05)
    try:
        lat = interleave.latencies(
            {"x": interleave.Split((held.port,)), "y": interleave.Split((held.port,))},
            load.Inputs(("t",), True),
            5,
            connections=4,
        )
    finally:
        held.stop()
    assert {name: len(v) for name, v in lat.items()} == {"x": 20, "y": 20}
    assert held.most == 4  # the four of a round at once, never two rounds (or targets) together
    assert all(40 <= ms < 500 for v in lat.values() for ms in v)


def test_added_is_the_difference_of_p50s_and_of_each_input() -> None:
    lat = {"proxy": [10.5, 11.5, 12.5, 30.0], "direct": [10.0, 11.0, 12.0, 13.0]}
    got = interleave.added(lat, "proxy", "direct")
    assert (got.p50_ms, got.paired_ms) == (0.5, 0.5)
    assert got.low_ms <= 0.5 <= got.high_ms
    assert interleave.figures(lat)["proxy"]["p50_ms"] == 12.0


def test_with_several_connections_added_pairs_rounds_not_requests() -> None:
    # two rounds of two: the proxy's round means are 1 ms and 3 ms above the direct ones
    lat = {"proxy": [11.0, 21.0, 13.0, 25.0], "direct": [10.0, 20.0, 10.0, 22.0]}
    got = interleave.added(lat, "proxy", "direct", connections=2)
    assert got.paired_ms == 2.0 and got.connections == 2
    assert (got.low_ms, got.high_ms) == (1.0, 3.0)
    with pytest.raises(ValueError, match="not rounds of 3"):
        interleave.added(lat, "proxy", "direct", connections=3)


def test_the_interval_narrows_with_more_rounds() -> None:
    draw = random.Random(1)
    few = {"p": [1.0 + draw.gauss(0, 1) for _ in range(20)], "d": [0.0] * 20}
    many = {"p": [1.0 + draw.gauss(0, 1) for _ in range(2000)], "d": [0.0] * 2000}
    a, b = interleave.added(few, "p", "d"), interleave.added(many, "p", "d")
    assert b.high_ms - b.low_ms < (a.high_ms - a.low_ms) / 4
    assert b.low_ms < 1.0 < b.high_ms


def test_an_answer_other_than_200_fails_the_measurement() -> None:
    class Refusing(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(RuntimeError, match="unexpected answer"):
            interleave.latencies({"x": interleave.Split((httpd.server_address[1],))}, load.Inputs(("t",), True), 3)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_connection_the_server_closed_while_idle_is_opened_again() -> None:
    class Closing(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
            self.close_connection = True  # as a server's keep-alive timeout would, later

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Closing)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    conn = interleave._Conn(httpd.server_address[1])
    try:
        first = conn.sock
        conn.send("/predict", b"{}", b"k")
        while conn.feed() is None:
            pass
        deadline = time.monotonic() + 5
        while not select.select([first], [], [], 0.05)[0]:  # the server's close arrives
            assert time.monotonic() < deadline, "the server never closed the connection"
        conn.send("/predict", b"{}", b"k")  # on a new connection: the closed one is not written to
        assert conn.sock is not first
        while conn.feed() is None:
            pass
    finally:
        conn.close()
        httpd.shutdown()
        httpd.server_close()
