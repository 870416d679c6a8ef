"""The connection pool: keep-alive HTTP/1.1 connections to one upstream (``http://host:port``),
one request at a time each. A reused connection that dies before answering is replaced once by a
fresh one within the same deadline (the upstream closed it while idle: safe to retry).

Request timeouts are checked by one timer per event loop, armed for the earliest deadline of the
requests in flight (plus ``SLACK_S``, so that deadlines close together are checked at once), not by
a timer per request (arming and cancelling a loop timer for every request was about a tenth of the
router's Python time in a warm loop). Requests answered in time never wake the process: a ticker
that checked every 20 ms cost a wakeup each time, 15 µs of CPU per request at one connection.
A timeout fires at most ``SLACK_S`` late.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from typing import Any, Final, cast

import httptools

from controller.adapters.router.wire import LENGTH_ONLY, MAX_RESPONSE, Response, lean_head, notable

UPSTREAM_IDLE_S: Final = 4.0  # reuse idle upstream connections younger than this (uvicorn closes at 5 s)
MAX_IDLE_PER_UPSTREAM: Final = 128
CONNECT_TIMEOUT_S: Final = 2.0  # upstreams are on loopback: a connect that takes longer will not succeed
SLACK_S: Final = 0.02  # how late past a deadline a timeout may fire


class UpstreamError(Exception):
    """An attempt that got no usable HTTP response. ``kind`` is ``connect`` or ``timeout``;
    ``stale``: a reused keep-alive connection failed before any byte came back (safe to retry)."""

    def __init__(self, kind: str, message: str, *, stale: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.stale = stale


Done = Callable[[Response | None, "UpstreamError | None"], None]  # a response, or why none came


class Deadlines:
    """The requests in flight on one event loop; one timer, due at the earliest of their deadlines."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.flight: set[Connection] = set()
        self._tick: asyncio.TimerHandle | None = None
        self._due = 0.0  # loop time the timer fires at

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Deadlines:
        watch = _DEADLINES.get(loop)
        if watch is None:
            watch = _DEADLINES[loop] = cls(loop)
        return watch

    def add(self, conn: Connection) -> None:
        self.flight.add(conn)
        if self._tick is None or conn.deadline + SLACK_S < self._due:  # else (usually) it is due before this one
            self._arm(conn.deadline)

    def _arm(self, deadline: float) -> None:
        if self._tick is not None:
            self._tick.cancel()
        self._due = deadline + SLACK_S
        self._tick = self.loop.call_at(self._due, self.check)

    def check(self) -> None:
        self._tick = None
        now = self.loop.time()
        for conn in [c for c in self.flight if c.deadline <= now]:
            self.flight.discard(conn)
            conn.timed_out()
        if self.flight:
            self._arm(min(c.deadline for c in self.flight))


_DEADLINES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines] = weakref.WeakKeyDictionary()


class Connection:
    """One keep-alive connection to an upstream; one request at a time. ``request`` calls ``done``
    exactly once, from the event loop (no future, no task: the router's fast path chains callbacks).
    An ``asyncio.Protocol`` by its methods, not by its base (see ``ClientConn``)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.deadlines = Deadlines.of(self.loop)
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self._waiter: Done | None = None
        self.deadline = 0.0  # loop time by which the request in flight must be answered
        self.since = 0.0  # monotonic time it came to rest in its pool (``Upstream.idle``)
        self._timeout = 0.0
        self._got = self._head = self._headers_done = self._framed = self._lean = False
        # a lean answer (``wire.lean_head``) whose body comes in later reads: its status, where its
        # head ends, how many bytes it has in all, its notable headers
        self._status = self._end = self._want = 0
        self._known = LENGTH_ONLY
        self._raw: list[bytes] = []  # what came until the head was complete
        self._headbytes = b""
        self._notable: frozenset[bytes] = frozenset()
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

    def eof_received(self) -> None:
        """The upstream shut its side: the transport closes (``connection_lost`` follows)."""

    def pause_writing(self) -> None:
        """Requests are small and written whole: nothing to pause."""

    def resume_writing(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def wait(self, data: bytes, timeout: float, head: bool) -> asyncio.Future[Response]:
        """``request`` as a future."""
        future: asyncio.Future[Response] = self.loop.create_future()

        def done(resp: Response | None, exc: UpstreamError | None) -> None:
            if future.done():
                return
            if resp is not None:
                future.set_result(resp)
            else:
                future.set_exception(exc or UpstreamError("connect", "no response"))

        self.request(data, timeout, head, done)
        return future

    def request(self, data: bytes, timeout: float, head: bool, done: Done) -> None:
        assert self.transport is not None
        self.transport.write(data)  # first: should it raise, this connection owes nobody an answer
        self._waiter = done
        self._got = self._headers_done = self._framed = self._lean = False  # the rest: when the parser is fed
        self._head = head
        self._timeout = timeout
        self.deadline = self.loop.time() + timeout
        self.deadlines.add(self)

    def timed_out(self) -> None:
        """Called by ``Deadlines`` once the deadline passed."""
        self._fail(UpstreamError("timeout", f"no complete response within {self._timeout:g}s"))
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: UpstreamError) -> None:
        waiter, self._waiter = self._waiter, None
        self.deadlines.flight.discard(self)
        if waiter is not None:
            self.reusable = False
            waiter(None, exc)

    def _finish(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            return
        self.deadlines.flight.discard(self)
        keep = self.reusable and not self.closed and self.parser.should_keep_alive()
        resp = Response(self.parser.get_status_code(), self._headbytes, b"".join(self._body), keep, self._notable)
        waiter(resp, None)

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None:  # bytes nobody asked for: the connection is out of sync
            self.reusable = False
            self.close()
            return
        if self._lean:  # more of a lean answer's body
            self._body.append(data)
            self._size += len(data)
            if self._size >= self._want:
                self._lean_done(waiter, b"".join(self._body))
            return
        if not self._got:  # the first bytes of this response
            self._got = True
            if not self._head:  # the common case: a head in the plain form, no parser callback
                status, end, length, known = lean_head(data)
                if end >= 0 and length <= MAX_RESPONSE and end + length >= len(data):
                    self._status, self._end, self._want, self._known = status, end, end + length, known
                    if self._want == len(data):  # whole in one read
                        self._lean_done(waiter, data)
                    else:  # its body still to come (an upstream that writes head and body apart)
                        self._lean = self._headers_done = self._framed = True
                        self._body, self._size = [data], len(data)
                    return
            self._raw, self._headbytes, self._body, self._size = [], b"", [], 0
        if not self._headers_done:
            self._raw.append(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError("connect", f"invalid response: {exc.__context__ or exc}"))
            self.close()

    def _lean_done(self, waiter: Done, data: bytes) -> None:
        """A lean answer is whole in ``data`` (bytes past it: the connection is out of sync)."""
        self._waiter = None
        self.deadlines.flight.discard(self)
        end, want = self._end, self._want
        if len(data) > want:
            self.reusable = False
        keep = self.reusable and not self.closed
        waiter(Response(self._status, data[:end], data[end:want], keep, self._known), None)

    def on_headers_complete(self) -> None:
        raw = self._raw[0] if len(self._raw) == 1 else b"".join(self._raw)
        self._raw = []
        # up to the blank line: the parser has just seen it (it takes CRLF line ends only)
        self._headbytes = raw[: raw.find(b"\r\n\r\n") + 4]
        self._headers_done = True
        self._notable = notable(self._headbytes)
        # a close before the end truncates a framed body: an error, not the end
        self._framed = b"content-length" in self._notable or b"transfer-encoding" in self._notable
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
    """A pool of keep-alive connections to one ``http://host:port``. ``idle``: the connections at
    rest, the most recent last, each with the monotonic time it came to rest (``Connection.since``)."""

    def __init__(self, url: str, host: str, port: int) -> None:
        self.url, self.host, self.port = url, host, port
        self.idle: list[Connection] = []
        self.retired = False

    def take(self, now: float) -> Connection | None:
        """An idle keep-alive connection young enough to reuse, or None."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.since < UPSTREAM_IDLE_S:
                return conn
            conn.close()
        return None

    async def _connect(self, timeout: float) -> Connection:
        loop = asyncio.get_running_loop()
        conn = Connection()
        try:
            async with asyncio.timeout(min(timeout, CONNECT_TIMEOUT_S)):
                await loop.create_connection(lambda: cast(Any, conn), self.host, self.port)
        except TimeoutError:
            raise UpstreamError("timeout", f"connecting to {self.url} timed out") from None
        except OSError as exc:
            raise UpstreamError("connect", f"cannot connect to {self.url}: {exc.strerror or exc}") from None
        return conn

    async def reachable(self, timeout: float) -> bool:
        """Whether a connection to the upstream opens now (closed again at once)."""
        try:
            conn = await self._connect(timeout)
        except UpstreamError:
            return False
        conn.close()
        return True

    async def send(self, data: bytes, *, timeout: float, head: bool = False) -> Response:
        """One request/response exchange; raises UpstreamError. A reused connection that turns out to
        be dead before answering is replaced by a fresh one once, within the same deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = self.take(time.monotonic())
        while True:
            fresh = conn is None
            if conn is None:
                conn = await self._connect(deadline - loop.time())
            try:
                resp = await conn.wait(data, max(0.001, deadline - loop.time()), head)
            except UpstreamError as exc:
                conn.close()
                if exc.stale and not fresh:
                    conn = None
                    continue
                raise
            except asyncio.CancelledError:
                conn.close()
                raise
            return self.release(conn, resp, time.monotonic())

    def release(self, conn: Connection, resp: Response, now: float) -> Response:
        """After a complete response: keep the connection for reuse when it may be kept; ``resp``."""
        if resp.keep_alive and not self.retired and len(self.idle) < MAX_IDLE_PER_UPSTREAM:
            conn.since = now
            self.idle.append(conn)
        else:
            conn.close()
        return resp

    def retire(self) -> None:
        """No longer configured: close idle connections; those in flight close when done."""
        self.retired = True
        for conn in self.idle:
            conn.close()
        self.idle.clear()
