"""The router's HTTP plumbing: buffered requests and responses, and pooled keep-alive
connections to the upstream revisions (with one retry on a connection the server closed).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from http import HTTPStatus
from typing import cast

import httptools
import orjson

from controller.plan import telemetry

log = logging.getLogger("modship.router")

MAX_BODY = 4 << 20  # request bodies are small JSON; buffered for replay
MAX_RESPONSE = 32 << 20
MAX_HEADER_BYTES = 64 << 10
CLIENT_IDLE_S = 75.0  # close idle (or stalled) client connections after this
UPSTREAM_IDLE_S = 4.0  # reuse idle upstream connections younger than this (uvicorn closes at 5 s)
MAX_IDLE_PER_UPSTREAM = 128
MAX_MIRRORS_IN_FLIGHT = 256  # beyond this, requests are not mirrored (a slow canary must not pile up)
PROBE_TIMEOUT_S = 0.5
CONNECT_TIMEOUT_S = 2.0  # upstreams are on loopback: a connect that takes longer will not succeed

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"expect",
    }
)
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_NO_BODY_METHODS = frozenset({b"GET", b"HEAD", b"DELETE", b"OPTIONS"})
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class UpstreamError(Exception):
    """An attempt that got no usable HTTP response. ``kind`` is ``connect`` or ``timeout``;
    ``stale``: a reused keep-alive connection failed before any byte came back (safe to retry)."""

    def __init__(self, kind: str, message: str, *, stale: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.stale = stale


class _Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Response:
    __slots__ = ("body", "headers", "keep_alive", "reason", "status")

    def __init__(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], body: bytes, keep_alive: bool
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers  # names lower-cased
        self.body = body
        self.keep_alive = keep_alive


class Request:
    __slots__ = ("_lengths", "body", "headers", "keep_alive", "method", "reject", "target")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        keep_alive: bool,
        reject: _Reject | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers  # names lower-cased, hop-by-hop headers removed
        self.body = body
        self.keep_alive = keep_alive
        self.reject = reject
        self._lengths: tuple[int, ...] | None = None

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def cookie(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == b"cookie":
                for part in v.split(b";"):
                    k, _, val = part.strip().partition(b"=")
                    if k == name:
                        return val
        return None

    def lengths(self) -> tuple[int, ...]:
        if self._lengths is None:
            self._lengths = telemetry.input_lengths(self.body) if self.body else ()
        return self._lengths

    def encode(self, extra: bytes = b"") -> bytes:
        parts = [self.method, b" ", self.target, b" HTTP/1.1\r\n"]
        for n, v in self.headers:
            parts += (n, b": ", v, b"\r\n")
        if self.body or self.method not in _NO_BODY_METHODS:
            parts.append(b"content-length: %d\r\n" % len(self.body))
        parts += (extra, b"\r\n", self.body)
        return b"".join(parts)


def bucket(key: bytes) -> float:
    """A stable position in [0, 100) for a sticky key: raising the weight only adds users."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % 10_000 / 100


# -- upstream side ----------------------------------------------------------------------------------


class _UpstreamConn(asyncio.Protocol):
    """One keep-alive connection to an upstream; one request at a time."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self._waiter: asyncio.Future[Response] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._got = self._head = self._headers_done = self._framed = False
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass asyncio's

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and self._headers_done and not self._framed:  # body ends at the close
            self.reusable = False
            self._finish()
        self._fail(UpstreamError("connect", "connection closed before a complete response", stale=not self._got))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def request(self, data: bytes, timeout: float, head: bool) -> asyncio.Future[Response]:
        assert self.transport is not None
        self._waiter = waiter = self.loop.create_future()
        self._got = self._headers_done = self._framed = False
        self._head = head
        self._reason = b""
        self._headers = []
        self._body = []
        self._size = 0
        self.transport.write(data)
        self._timer = self.loop.call_later(timeout, self._timed_out, timeout)
        return waiter

    def _timed_out(self, timeout: float) -> None:
        self._timer = None
        self._fail(UpstreamError("timeout", f"no complete response within {timeout:g}s"))
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: UpstreamError) -> None:
        waiter, self._waiter = self._waiter, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if waiter is not None:
            self.reusable = False
            if not waiter.done():
                waiter.set_exception(exc)

    def _finish(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        keep = self.reusable and not self.closed and self.parser.should_keep_alive()
        resp = Response(self.parser.get_status_code(), self._reason, self._headers, b"".join(self._body), keep)
        if not waiter.done():
            waiter.set_result(resp)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the connection is out of sync
            self.reusable = False
            self.close()
            return
        self._got = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError("connect", f"invalid response: {exc.__context__ or exc}"))
            self.close()

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _FRAMING:
            self._framed = True  # a close before the end truncates the body: an error, not the end
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        if self._head:  # no body follows; the parser cannot be told, so the connection is not reused
            self.reusable = False
            self._finish()

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_RESPONSE:
            raise ValueError(f"response body over {MAX_RESPONSE} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._finish()


class Upstream:
    """A pool of keep-alive connections to one ``http://host:port``."""

    def __init__(self, url: str, host: str, port: int) -> None:
        self.url, self.host, self.port = url, host, port
        self._idle: list[tuple[_UpstreamConn, float]] = []
        self.retired = False

    def _take(self, now: float) -> _UpstreamConn | None:
        while self._idle:
            conn, since = self._idle.pop()
            if not conn.closed and now - since < UPSTREAM_IDLE_S:
                return conn
            conn.close()
        return None

    async def _connect(self, timeout: float) -> _UpstreamConn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(min(timeout, CONNECT_TIMEOUT_S)):
                _, conn = await loop.create_connection(_UpstreamConn, self.host, self.port)
        except TimeoutError:
            raise UpstreamError("timeout", f"connecting to {self.url} timed out") from None
        except OSError as exc:
            raise UpstreamError("connect", f"cannot connect to {self.url}: {exc.strerror or exc}") from None
        return conn

    async def send(self, data: bytes, *, timeout: float, head: bool = False) -> Response:
        """One request/response exchange; raises UpstreamError. A reused connection that turns out to
        be dead before answering is replaced by a fresh one once, within the same deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = self._take(loop.time())
        while True:
            fresh = conn is None
            if conn is None:
                conn = await self._connect(deadline - loop.time())
            try:
                resp = await conn.request(data, max(0.001, deadline - loop.time()), head)
            except UpstreamError as exc:
                conn.close()
                if exc.stale and not fresh:
                    conn = None
                    continue
                raise
            except asyncio.CancelledError:
                conn.close()
                raise
            if resp.keep_alive and not self.retired and len(self._idle) < MAX_IDLE_PER_UPSTREAM:
                self._idle.append((conn, loop.time()))
            else:
                conn.close()
            return resp

    def retire(self) -> None:
        """No longer configured: close idle connections; those in flight close when done."""
        self.retired = True
        for conn, _ in self._idle:
            conn.close()
        self._idle.clear()


class Attempt:
    """One request sent to one upstream: the response (None when none came), the failure kind
    (``connect``, ``timeout``, ``status5xx`` or None) and the latency (None without a connection)."""

    __slots__ = ("kind", "latency", "resp")

    def __init__(self, resp: Response | None, kind: str | None, latency: float | None) -> None:
        self.resp, self.kind, self.latency = resp, kind, latency

    @classmethod
    async def run(cls, up: Upstream, data: bytes, req: Request, timeout: float) -> Attempt:
        t0 = time.perf_counter()
        try:
            resp = await up.send(data, timeout=timeout, head=req.method == b"HEAD")
        except UpstreamError as exc:
            return cls(None, exc.kind, None if exc.kind == "connect" else time.perf_counter() - t0)
        return cls(resp, "status5xx" if resp.status >= 500 else None, time.perf_counter() - t0)

    @property
    def code(self) -> str:
        """The status for counters: the upstream's, or what a gateway answers (502, 504)."""
        return str(self.resp.status) if self.resp is not None else "504" if self.kind == "timeout" else "502"

    def answer(self, req: Request, revision: str, routed: bytes) -> bytes:
        """The bytes for the client: the upstream's response relayed, or a 502/504 error."""
        if self.resp is not None:
            return _relay(
                self.resp,
                revision=revision.encode(),
                routed=routed,
                keep_alive=req.keep_alive,
                head=req.method == b"HEAD",
            )
        extra = b"x-modship-revision: %s\r\nx-modship-routed: %s\r\n" % (revision.encode(), routed)
        doc = {"error": f"revision {revision} did not answer ({self.kind})", "revision": revision}
        return _json(int(self.code), doc, keep_alive=req.keep_alive, extra=extra)


def _response(
    status: int, body: bytes, *, keep_alive: bool, ctype: bytes = b"application/json", extra: bytes = b""
) -> bytes:
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
            % (status, _REASONS.get(status, b"Unknown"), ctype, len(body)),
            extra,
            b"" if keep_alive else b"connection: close\r\n",
            b"\r\n",
            body,
        )
    )


def _json(status: int, doc: object, *, keep_alive: bool, extra: bytes = b"") -> bytes:
    return _response(status, orjson.dumps(doc), keep_alive=keep_alive, extra=extra)


def _relay(resp: Response, *, revision: bytes, routed: bytes, keep_alive: bool, head: bool) -> bytes:
    parts = [b"HTTP/1.1 %d %s\r\n" % (resp.status, resp.reason or _REASONS.get(resp.status, b"Unknown"))]
    named = False
    for n, v in resp.headers:
        if n in _HOP_BY_HOP and not (head and n == b"content-length"):
            continue
        named = named or n == b"x-modship-revision"
        parts += (n, b": ", v, b"\r\n")
    if not named:
        parts += (b"x-modship-revision: ", revision, b"\r\n")
    parts += (b"x-modship-routed: ", routed, b"\r\n")
    if not head:
        parts.append(b"content-length: %d\r\n" % len(resp.body))
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts += (b"\r\n", b"" if head else resp.body)
    return b"".join(parts)
