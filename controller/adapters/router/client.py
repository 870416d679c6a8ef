"""Client connections: httptools parses requests on the event loop; pipelined requests are answered
in order, one at a time. A request is first offered to the handler's fast path (answered through
callbacks, without a task); what it declines, and everything queued behind a request in flight, is
served by one worker task per connection.

Kept connections (``kept``: the router runs under the local runtime's supervisor) are handed over
as they are accepted (``kept.Acceptor``), journaled as read and counted as answered, so that a
restarted router resumes them (``replay``: the journal's bytes, parsed again, the requests
answered already skipped).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any, Final, Protocol, cast

import httptools

from controller.adapters import connkeep
from controller.adapters.router import kept, wire

log = logging.getLogger("modship.router")

CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_monotonic: Final = time.monotonic  # bound once (see ``server``)


class Handler(Protocol):
    clients: set[ClientConn]
    kept: kept.Kept | None

    def fast(self, req: wire.Request, out: ClientConn) -> bool:
        """Start answering ``req`` now, through callbacks; ``out.finished`` or ``out.hand_over``
        follows. False: declined, ``serve`` will be awaited for it instead."""

    async def serve(self, req: wire.Request, out: ClientConn) -> None: ...


class ClientConn:
    """One client connection: parse requests (pipelined ones in order) and answer them in turn.

    An ``asyncio.Protocol`` by its methods, not by its base: a class compiled by mypyc
    (``native``) cannot derive from a Python one."""

    def __init__(
        self, router: Handler, *, slot: int | None = None, replay: tuple[bytes, int, int] | None = None
    ) -> None:
        self.router = router
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[wire.Request] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.busy = False  # a request is in flight on the fast path
        self.last: wire.Request | None = None
        self.last_active = _monotonic()
        self.paused = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._expect = False
        self._mid = False  # the parser is inside a request
        # kept connections: the journal slot, its length, requests parsed and answered since it was
        # last emptied, those to skip (answered by a router before this one), and the bytes written
        # to the connection since it opened (by every router)
        self.slot = slot
        self.length = 0
        self.parsed = self.answered = self.skip = self.out = 0
        self._replay = replay
        self._fd = self._family = -1  # the kept connection's

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass asyncio's
        self.router.clients.add(self)
        keeper = self.router.kept
        if keeper is None:
            return
        sock = transport.get_extra_info("socket")
        self._fd, self._family = sock.fileno(), sock.family
        if self._replay is None:  # handed over on accept (``kept.Acceptor``), in ``slot`` if kept
            return
        data, self.answered, self.out = self._replay
        self.length, self.skip, self._replay = len(data), self.answered, None
        self._feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.router.clients.discard(self)
        self.transport = None
        if self.slot is not None and self.router.kept is not None:
            self.router.kept.release(self.slot)
            self.slot = None

    def eof_received(self) -> None:
        """The client shut its side: the transport closes."""

    def pause_writing(self) -> None:
        """The client reads slowly: nothing to pause (answers are written whole)."""

    def resume_writing(self) -> None:
        pass

    def close(self) -> None:
        t = self.transport
        if t is None:
            return
        if self.slot is not None and not t.is_closing() and t.get_write_buffer_size() == 0:
            kept.shut(self._family, self._fd)  # else the supervisor's copy closes once it is told, after the flush
        t.close()

    def send(self, data: bytes) -> None:
        """Send the answer to the oldest request not answered yet.

        On a kept connection the journal counts the answer first, then it is written, so that a kill
        between the two never makes the next router answer twice (written first, the window would
        include the write itself, after which the kernel often runs the woken client before this
        process again). The next router asks the kernel whether the answer left (``connkeep``)."""
        t = self.transport
        writing = t is not None and not t.is_closing()
        if self.slot is not None and self.router.kept is not None:
            self.answered += 1
            size = len(data) if writing else 0
            self.out += size
            if self.length != connkeep.OVERFLOW:
                self.router.kept.journal.answer(self.slot, self.length, self.answered, after=self.out, size=size)
        if writing:
            t.write(data)  # type: ignore[union-attr]  # ``writing``: not None

    def data_received(self, data: bytes) -> None:
        self.last_active = _monotonic()
        if self.slot is not None and self.router.kept is not None:
            journal = self.router.kept.journal
            if self.answered >= self.parsed and not self._mid and (self.length or self.answered):
                # what was read before is answered, its answers written: the slot starts afresh
                self.parsed = self.answered = self.length = 0
                journal.mark(self.slot, 0, 0)
            if self.length != connkeep.OVERFLOW:
                self.length = journal.append(self.slot, self.length, self.answered, data)
        last = self.last
        if not (self.busy or self._mid or self.paused or self.skip) and self.worker is None and not self.queue:
            # the common case, in as few calls as it takes (see ``Router.fast``): one whole request
            # read at once, between requests, nothing in flight; passed on as it came
            req = wire.lean_request(data) if last is None or last.keep_alive else None
            if req is not None:
                self.parsed += 1
                self.last = req
                self.busy = True
                if not self.router.fast(req, self):
                    self.busy = False
                    self.queue.append(req)
                    self.worker = asyncio.get_running_loop().create_task(self._work())
                return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # not supported: serve what was parsed, then close
            if self.last is not None:  # the request in flight or queued last
                self.last.keep_alive = False
            self._stop_reading()
        except httptools.HttpParserError as exc:
            reject = (
                exc.__context__ if isinstance(exc.__context__, wire.Reject) else wire.Reject(400, f"bad request: {exc}")
            )
            self._enqueue(wire.Request(b"", b"", [], b"", keep_alive=False, reject=reject))
            self._stop_reading()

    def _stop_reading(self) -> None:
        if self.transport is not None and not self.paused:
            self.transport.pause_reading()
            self.paused = True

    def on_message_begin(self) -> None:
        self._mid = True
        self._url = b""
        self._headers = []
        self._body = []
        self._size = 0
        self._expect = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._size += len(name) + len(value)
        if self._size > wire.MAX_HEADER_BYTES:
            raise wire.Reject(431, f"request headers over {wire.MAX_HEADER_BYTES} bytes")
        name = name.lower()
        if name in wire.HOP_BY_HOP:
            self._expect = self._expect or (name == b"expect" and value.lower() == b"100-continue")
            return
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._size = 0
        if self._expect and self.transport is not None:  # an interim answer: not counted as one
            self.transport.write(CONTINUE)
            self.out += len(CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > wire.MAX_BODY:
            raise wire.Reject(413, f"request body over {wire.MAX_BODY} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._mid = False
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        keep = self.parser.should_keep_alive()
        req = wire.Request(self.parser.get_method(), self._url, self._headers, body, keep_alive=keep)
        self._enqueue(req)

    def _enqueue(self, req: wire.Request) -> None:
        self.parsed += 1
        if self.skip:  # answered by the router that was killed
            self.skip -= 1
            if not req.keep_alive:
                self.close()
            return
        self.last = req
        if not self.busy and self.worker is None and not self.queue and req.reject is None:
            self.busy = True
            if self.router.fast(req, self):
                return
            self.busy = False
        self.queue.append(req)
        if self.worker is None and not self.busy:
            self.worker = asyncio.get_running_loop().create_task(self._work())
        if len(self.queue) > 16:  # a client pipelining without reading: stop reading until we catch up
            self._stop_reading()

    def reply(self, req: wire.Request, data: bytes) -> None:
        """The fast path's answer to ``req``: ``send``, then ``finished``."""
        self.send(data)
        self.finished(req)

    def finished(self, req: wire.Request) -> None:
        """The fast path answered ``req``: go on with what queued up meanwhile."""
        self.busy = False
        self.last_active = _monotonic()
        if not req.keep_alive:
            self.close()
            return
        if self.queue:
            self.worker = asyncio.get_running_loop().create_task(self._work())

    def hand_over(self, req: wire.Request, rest: Coroutine[Any, Any, None]) -> None:
        """The fast path needs to wait for more (a fallback, a fresh connection): ``rest`` answers
        ``req`` in the worker task, before the queue."""
        self.busy = False
        self.worker = asyncio.get_running_loop().create_task(self._work(req, rest))

    def failed(self) -> None:
        log.exception("unexpected error while serving a request")
        self.busy = False
        self.send(wire.json(500, {"error": "internal router error"}, keep_alive=False))
        self.close()

    async def _work(self, first: wire.Request | None = None, rest: Coroutine[Any, Any, None] | None = None) -> None:
        try:
            if first is not None and rest is not None:
                await rest
                if not first.keep_alive:
                    self.close()
                    return
            while self.queue:
                req = self.queue.popleft()
                if req.reject is not None:
                    self.send(wire.json(req.reject.status, {"error": str(req.reject)}, keep_alive=False))
                    self.close()
                    return
                await self.router.serve(req, self)
                if not req.keep_alive:
                    self.close()
                    return
                if self.paused and len(self.queue) < 4 and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
        except Exception:
            self.failed()
        finally:
            self.worker = None
            self.last_active = _monotonic()
