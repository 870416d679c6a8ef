"""``bench.interleave``: every input through every target in turn, a client's own split drawn per
request, and what one target adds to another."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench import interleave, load


class _Server:
    """A keep-alive HTTP/1.1 server on a free port that records the bodies it was sent."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        seen = self.bodies

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes

            def do_POST(self) -> None:
                seen.append(self.rfile.read(int(self.headers["Content-Length"])))
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


def test_added_is_the_difference_of_p50s_and_of_each_input() -> None:
    lat = {"proxy": [10.5, 11.5, 12.5, 30.0], "direct": [10.0, 11.0, 12.0, 13.0]}
    got = interleave.added(lat, "proxy", "direct")
    assert (got.p50_ms, got.paired_ms) == (0.5, 0.5)
    assert interleave.figures(lat)["proxy"]["p50_ms"] == 12.0


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
