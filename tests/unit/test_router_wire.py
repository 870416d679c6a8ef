"""The router's wire format: an upstream's answer relayed to the client, as it came where it can be,
rebuilt header by header where it cannot."""

from __future__ import annotations

import asyncio

import httptools
import pytest

from controller.adapters.router import wire
from controller.adapters.router.upstream import Connection, UpstreamError
from tests.support.transports import NullTransport

TAIL = wire.tail(b"r2", b"canary")
BODY = b'{"prediction": {"label": "sport"}}'


def response(head: bytes, body: bytes = BODY) -> wire.Response:
    status = int(head.split(b" ", 2)[1])
    return wire.Response(status, head, body, keep_alive=True)


def parsed(data: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """What a client makes of the relayed bytes: status, headers (names lower-cased), body."""
    got: dict[str, object] = {"headers": [], "body": b""}

    class Sink:
        def on_header(self, name: bytes, value: bytes) -> None:
            got["headers"].append((name.lower(), value))  # type: ignore[attr-defined]

        def on_body(self, body: bytes) -> None:
            got["body"] += body  # type: ignore[operator]

    p = httptools.HttpResponseParser(Sink())
    p.feed_data(data)
    return p.get_status_code(), got["headers"], got["body"]  # type: ignore[return-value]


def test_a_plain_head_is_relayed_as_it_came_with_modships_lines_before_the_blank_line() -> None:
    head = b"HTTP/1.1 200 OK\r\nDate: Mon, 30 Nov 2026 12:00:00 GMT\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    out = wire.relay(response(head), tail=TAIL, keep_alive=True, head=False)
    assert out == head[:-2] + TAIL + b"\r\n" + BODY
    closing = wire.relay(response(head), tail=TAIL, keep_alive=False, head=False)
    assert b"connection: close\r\n\r\n" in closing


def test_an_upstream_that_names_its_revision_keeps_its_name() -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Modship-Revision: topic@3\r\ncontent-length: %d\r\n\r\n" % len(BODY)
    status, headers, body = parsed(wire.relay(response(head), tail=TAIL, keep_alive=True, head=False))
    assert [v for n, v in headers if n == b"x-modship-revision"] == [b"topic@3"]
    assert (b"x-modship-routed", b"canary") in headers and (status, body) == (200, BODY)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.0 200 OK\r\ncontent-length: %d\r\n\r\n" % len(BODY),  # not our protocol version
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\ncontent-length: %d\r\n\r\n"
        % len(BODY),  # hop-by-hop headers
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",  # the body was de-chunked
        b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n",  # framed by the close
    ],
)
def test_any_other_head_is_rebuilt_with_our_framing_and_no_hop_by_hop_header(head: bytes) -> None:
    out = wire.relay(response(head), tail=TAIL, keep_alive=True, head=False)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    status, headers, body = parsed(out)
    names = [n for n, _ in headers]
    assert not set(names) & (wire.HOP_BY_HOP - {b"content-length"})
    assert names.count(b"content-length") == 1 and (status, body) == (200, BODY)
    assert (b"x-modship-revision", b"r2") in headers


def test_a_head_request_gets_the_upstreams_length_and_no_body() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 120\r\n\r\n"
    out = wire.relay(response(head, b""), tail=TAIL, keep_alive=True, head=True)
    assert out.endswith(b"\r\n\r\n") and b"content-length: 120\r\n" in out


def test_the_reason_and_headers_are_read_from_the_head() -> None:
    r = response(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After:  3 \r\n\r\n", b"")
    assert r.reason == b"Service Unavailable" and r.headers == [(b"retry-after", b"3")]
    assert r.notable == frozenset()


def answers(*chunks: bytes) -> list[tuple[wire.Response | None, object]]:
    """What an upstream connection hands the router for a response arriving in ``chunks``."""

    async def go() -> list[tuple[wire.Response | None, object]]:
        conn = Connection()
        conn.connection_made(NullTransport())  # type: ignore[arg-type]
        got: list[tuple[wire.Response | None, object]] = []
        conn.request(b"GET / HTTP/1.1\r\n\r\n", 5.0, False, lambda r, e: got.append((r, e)))
        for c in chunks:
            conn.data_received(c)
        return got

    return asyncio.run(go())


def test_the_upstream_head_is_kept_as_it_came_across_chunks() -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Modship-Revision: r9\r\ncontent-length: %d\r\n\r\n" % len(BODY)
    data = head + BODY
    [(resp, exc)] = answers(data[:7], data[7:30], data[30:])
    assert exc is None and resp is not None
    assert (resp.head, resp.body, resp.status) == (head, BODY, 200)
    assert resp.notable == {b"x-modship-revision", b"content-length"}


def test_a_head_with_bare_lf_lines_is_refused_as_invalid() -> None:
    """The head is cut at its CRLF blank line: the parser must refuse anything else."""
    [(resp, exc)] = answers(b"HTTP/1.1 200 OK\nx-a: 1\ncontent-length: %d\n\n" % len(BODY) + BODY)
    assert resp is None and isinstance(exc, UpstreamError) and "invalid response" in str(exc)


def test_a_plain_head_and_its_body_in_later_reads_make_one_answer_without_the_parser() -> None:
    """Upstreams that write the head and the body apart (uvicorn, so the Bento) are read leanly too:
    the body is gathered until the head's Content-Length is reached."""
    head = b"HTTP/1.1 200 OK\r\nx-modship-revision: r9\r\ncontent-length: %d\r\n\r\n" % len(BODY)
    [(resp, exc)] = answers(head, BODY[:5], BODY[5:])
    assert exc is None and resp is not None
    assert (resp.head, resp.body, resp.status, resp.keep_alive) == (head, BODY, 200, True)
    assert resp.notable is wire.LENGTH_AND_REVISION
    [(resp, exc)] = answers(head + BODY[:3], BODY[3:] + b"HTTP/1.1 200 OK\r\n")  # more than it said
    assert resp is not None and resp.body == BODY and not resp.keep_alive
    assert answers(head, BODY[:-1]) == []  # not whole yet: nothing handed over


def test_a_lean_answer_cut_short_by_a_close_is_an_error_not_an_answer() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(BODY)

    async def go() -> list[tuple[wire.Response | None, object]]:
        conn = Connection()
        conn.connection_made(NullTransport())  # type: ignore[arg-type]
        got: list[tuple[wire.Response | None, object]] = []
        conn.request(b"GET / HTTP/1.1\r\n\r\n", 5.0, False, lambda r, e: got.append((r, e)))
        conn.data_received(head + BODY[:4])
        conn.connection_lost(None)
        return got

    [(resp, exc)] = asyncio.run(go())
    assert resp is None and isinstance(exc, UpstreamError) and not exc.stale


@pytest.mark.parametrize("status", [204, 304])
def test_an_answer_without_a_body_by_its_status_is_left_to_the_parser(status: int) -> None:
    """A 304's Content-Length is the one a 200 would have had: no body follows it."""
    head = b"HTTP/1.1 %d X\r\ncontent-length: 20\r\n\r\n" % status
    assert wire.lean_head(head)[1] == -1
    [(resp, exc)] = answers(head)
    assert exc is None and resp is not None and (resp.status, resp.body) == (status, b"")
