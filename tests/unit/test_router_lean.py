"""The router's common case without a parser callback (``wire.lean_request``, ``wire.lean_response``):
a whole message read at once, in the plain form, is passed on as it came; anything else is declined
and goes through httptools, as before. What is accepted must read exactly as httptools reads it;
what could frame differently (several or odd lengths, chunking, hop-by-hop headers, a second
message behind the first, a body still to come) must be declined."""

from __future__ import annotations

import asyncio

import httptools
import pytest

from controller.adapters.router import wire
from controller.adapters.router.client import ClientConn
from tests.support.transports import NullTransport

BODY = b'{"text": "a match report"}'
REQUEST = (
    b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)
ANSWER = b'{"prediction": {"label": "sport"}}'
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER)


def full(data: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes, int]:
    """How the general path reads a request: httptools, names lower-cased, hop-by-hop dropped."""
    got: dict[str, object] = {"url": b"", "headers": [], "body": b"", "done": 0}

    class Sink:
        def on_url(self, url: bytes) -> None:
            got["url"] += url  # type: ignore[operator]

        def on_header(self, name: bytes, value: bytes) -> None:
            if name.lower() not in wire.HOP_BY_HOP:
                got["headers"].append((name.lower(), value))  # type: ignore[attr-defined]

        def on_body(self, body: bytes) -> None:
            got["body"] += body  # type: ignore[operator]

        def on_message_complete(self) -> None:
            got["done"] += 1  # type: ignore[operator]

    p = httptools.HttpRequestParser(Sink())
    p.feed_data(data)
    return p.get_method(), got["url"], got["headers"], got["body"], got["done"]  # type: ignore[return-value]


ACCEPTED = [
    REQUEST,
    b"GET /healthz?x=1 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /p HTTP/1.1\r\nhost: h\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\n{}",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length:2\r\nX-Empty:\r\nX-Tab:\ta\tb \r\n\r\n{}",
    b"PUT /p HTTP/1.1\r\nHost: h\r\nX-Season: \xc3\xa9t\xc3\xa9\r\nContent-Length: 0\r\n\r\n",
]


@pytest.mark.parametrize("data", ACCEPTED)
def test_a_plain_whole_request_is_read_as_httptools_reads_it_and_passed_on_as_it_came(data: bytes) -> None:
    req = wire.lean_request(data)
    assert req is not None
    method, url, headers, body, done = full(data)
    assert done == 1
    assert (req.method, req.target, req.headers, req.body) == (method, url, headers, body)
    assert req.keep_alive and req.raw == data and req.encode() == data


DECLINED = {
    "a second request behind it": REQUEST + b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    "a target in absolute form": b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
    "a target in asterisk form": b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    "a body still to come": REQUEST[:-3],
    "a head still to come": REQUEST[:40],
    "a body without a length": b"POST /p HTTP/1.1\r\nHost: h\r\n\r\n{}",
    "two lengths": REQUEST.replace(b"Host:", b"Content-Length: %d\r\nHost:" % len(BODY)),
    "a signed length": REQUEST.replace(b"Content-Length: ", b"Content-Length: +"),
    "a list as length": REQUEST.replace(
        b"Content-Length: %d" % len(BODY), b"Content-Length: %d, %d" % ((len(BODY),) * 2)
    ),
    "chunked": b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "chunked and a length": REQUEST.replace(b"Host:", b"Transfer-Encoding: chunked\r\nHost:"),
    "connection: close": REQUEST.replace(b"Host:", b"Connection: close\r\nHost:"),
    "connection naming a header": REQUEST.replace(b"Host:", b"Connection: keep-alive, x-secret\r\nHost:"),
    "expect": REQUEST.replace(b"Host:", b"Expect: 100-continue\r\nHost:"),
    "upgrade": b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n",
    "te": REQUEST.replace(b"Host:", b"TE: trailers\r\nHost:"),
    "keep-alive header": REQUEST.replace(b"Host:", b"Keep-Alive: timeout=5\r\nHost:"),
    "HTTP/1.0": REQUEST.replace(b"HTTP/1.1", b"HTTP/1.0"),
    "a space before the colon": REQUEST.replace(b"Host:", b"Host :"),
    "a folded line": REQUEST.replace(b"Host: 127.0.0.1:8080\r\n", b"Host: 127.0.0.1:8080\r\n  more\r\n"),
    "a bare LF": REQUEST.replace(b"Host: 127.0.0.1:8080\r\n", b"Host: 127.0.0.1:8080\n"),
    "a control byte in a value": REQUEST.replace(b"application/json", b"application/\x00json"),
    "a name that is no token": REQUEST.replace(b"Host:", b"X-Caf\xc3\xa9: 1\r\nHost:"),
    "a space in the target": REQUEST.replace(b"/predict", b"/pre dict"),
    "a head over the limit": REQUEST.replace(b"Host:", b"X-Big: " + b"a" * wire.MAX_HEADER_BYTES + b"\r\nHost:"),
}


@pytest.mark.parametrize("data", DECLINED.values(), ids=DECLINED.keys())
def test_anything_else_is_declined_for_httptools(data: bytes) -> None:
    assert wire.lean_request(data) is None


def test_a_plain_whole_response_is_read_without_the_parser() -> None:
    resp = wire.lean_response(RESPONSE, keep_alive=True)
    assert resp is not None
    assert (resp.status, resp.body, resp.keep_alive) == (200, ANSWER, True)
    assert resp.head == RESPONSE[: -len(ANSWER)] and resp.notable is wire.LENGTH_ONLY
    named = RESPONSE.replace(b"content-type", b"X-Modship-Revision: r9\r\ncontent-type")
    assert wire.lean_response(named, keep_alive=False).notable == {b"content-length", b"x-modship-revision"}  # type: ignore[union-attr]


RESPONSES_DECLINED = {
    "no length": b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nhello",
    "chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "a body still to come": RESPONSE[:-2],
    "bytes behind it": RESPONSE + b"HTTP/1.1 200 OK\r\n",
    "connection header": RESPONSE.replace(b"content-type", b"connection: keep-alive\r\ncontent-type"),
    "interim answer": b"HTTP/1.1 100 Continue\r\n\r\n",
    "HTTP/1.0": RESPONSE.replace(b"HTTP/1.1", b"HTTP/1.0"),
    "two lengths": RESPONSE.replace(b"content-type", b"content-length: 1\r\ncontent-type"),
    "an unreadable length": RESPONSE.replace(b"content-length: ", b"content-length: +"),
    "a space before the colon": RESPONSE.replace(b"content-length:", b"content-length :"),
    "a bare LF": RESPONSE.replace(b"json\r\n", b"json\n"),
    "a NUL in a value": RESPONSE.replace(b"application/json", b"application/\x00json"),
    "obs-fold": RESPONSE.replace(b"json\r\n", b"json\r\n more\r\n"),
    "no space after the code": RESPONSE.replace(b"200 OK", b"200"),
    "a code out of range": RESPONSE.replace(b"200 OK", b"600 OK"),
}


@pytest.mark.parametrize("data", RESPONSES_DECLINED.values(), ids=RESPONSES_DECLINED.keys())
def test_any_other_response_is_declined_for_httptools(data: bytes) -> None:
    assert wire.lean_response(data, keep_alive=True) is None


def parsed_response(data: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes, int]:
    """How httptools reads a response: status, headers (names lower-cased), body, messages completed."""
    got: dict[str, object] = {"headers": [], "body": b"", "done": 0}

    class Sink:
        def on_header(self, name: bytes, value: bytes) -> None:
            got["headers"].append((name.lower(), value.strip()))  # type: ignore[attr-defined]

        def on_body(self, body: bytes) -> None:
            got["body"] += body  # type: ignore[operator]

        def on_message_complete(self) -> None:
            got["done"] += 1  # type: ignore[operator]

    p = httptools.HttpResponseParser(Sink())
    try:
        p.feed_data(data)
    except httptools.HttpParserError:
        return 0, [], b"", 0
    return p.get_status_code(), got["headers"], got["body"], got["done"]  # type: ignore[return-value]


_PIECES = [
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b":",
    b",",
    b"+",
    b"0",
    b"7",
    b"\x00",
    b"\x7f",
    b"\xe9",
    b"a",
    b"K",
    b"Content-Length: 3\r\n",
    b"content-length:  0 \r\n",
    b"Connection: close\r\n",
    b"connection: Keep-Alive \r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"TE: x\r\n",
    b"Upgrade: h2c\r\n",
    b"x-modship-revision: r1\r\n",
]


def _mutants(seed: int, base: list[bytes], count: int) -> list[bytes]:
    """Random edits of ``base``: a byte or a header line inserted, replaced or dropped, one to three times."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(count):
        d = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(d))
            edit = rng.random()
            if edit < 0.5:
                d[at:at] = rng.choice(_PIECES)
            elif edit < 0.8:
                d[at : at + 1] = rng.choice(_PIECES)[:1]
            else:
                del d[at]
        out.append(bytes(d))
    return out


def test_whatever_the_lean_readers_accept_httptools_reads_the_same_way() -> None:
    """A differential check over 6,000 edited messages: whatever is accepted frames and reads as
    httptools reads it (one whole message, the same method, target, headers and body; the same
    status, headers and body)."""
    accepted = 0
    for data in _mutants(9, ACCEPTED, 3000):
        req = wire.lean_request(data)
        if req is not None:
            accepted += 1
            try:
                method, url, headers, body, done = full(data)
            except httptools.HttpParserInvalidMethodError:  # a token llhttp has no name for: the upstream's to answer
                assert req.method not in (b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH"), data
                continue
            assert done == 1, data
            assert (req.method, req.target, req.headers, req.body) == (method, url, headers, body), data
    responses = [RESPONSE, RESPONSE.replace(b"content-type", b"X-Modship-Revision: r9\r\ncontent-type")]
    for data in _mutants(10, responses, 3000):
        resp = wire.lean_response(data, keep_alive=True)
        if resp is not None:
            accepted += 1
            status, headers, body, done = parsed_response(data)
            assert (resp.status, resp.headers, resp.body, done) == (status, headers, body, 1), data
    assert 600 < accepted < 5400  # both kinds of outcome were exercised


class Handler:
    """Takes every request on the fast path and remembers it."""

    def __init__(self) -> None:
        self.clients: set[ClientConn] = set()
        self.kept = None
        self.taken: list[wire.Request] = []

    def fast(self, req: wire.Request, out: ClientConn) -> bool:
        self.taken.append(req)
        return True

    async def serve(self, req: wire.Request, out: ClientConn) -> None:  # pragma: no cover - not reached
        raise AssertionError("served on the slow path")


def test_a_request_split_across_reads_and_one_behind_another_still_go_through_httptools() -> None:
    """The lean reading applies between requests only: a request read in parts, and requests
    pipelined behind it, are parsed by httptools and answered in order."""
    asyncio.run(_split_and_pipelined())


async def _split_and_pipelined() -> None:
    handler = Handler()
    conn = ClientConn(handler)  # type: ignore[arg-type]
    conn.connection_made(NullTransport())  # type: ignore[arg-type]
    conn.data_received(REQUEST)  # whole: lean
    assert handler.taken[-1].raw == REQUEST
    conn.finished(handler.taken[-1])
    conn.data_received(REQUEST[:30])  # in parts: httptools
    conn.data_received(REQUEST[30:])
    assert len(handler.taken) == 2 and handler.taken[-1].raw is None and handler.taken[-1].body == BODY
    conn.finished(handler.taken[-1])
    conn.data_received(REQUEST + REQUEST)  # pipelined: httptools, the second queued behind the first
    assert len(handler.taken) == 3 and handler.taken[-1].raw is None
    assert len(conn.queue) == 1
    if conn.worker is not None:
        conn.worker.cancel()
        await asyncio.sleep(0)
