"""The router's server: client connections (httptools on the event loop, pipelined requests
answered in order) and ``Router``, which ties the applied route, the split, fallback, mirroring,
recording and the admin API together for one system.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from pathlib import Path
from typing import cast

import httptools

from controller.adapters.router import admin, fallback, metrics, split, wire
from controller.adapters.router.mirror import Mirrors
from controller.adapters.router.recorder import Recorder
from controller.adapters.router.route import Routes
from controller.plan import telemetry

log = logging.getLogger("modship.router")

CLIENT_IDLE_S = 75.0  # close idle (or stalled) client connections after this


class Router:
    """Routing state, telemetry and the admin API of one system's router."""

    def __init__(self, system: str, *, state: Path | None = None) -> None:
        self.system = system
        self.telemetry = telemetry.Telemetry()
        self.routes = Routes(system, state=state, telemetry=self.telemetry)
        self.counters = metrics.Counters(system, self._weights)
        self.recorder = Recorder(self.telemetry, self.counters)
        self.mirrors = Mirrors(self.recorder)
        self.clients: set[ClientConn] = set()

    def _weights(self) -> metrics.Weights:
        r = self.routes.current
        return metrics.Weights(
            stable=r.stable_rev if r.stable is not None else None,
            canary=r.canary_rev if r.canary is not None else None,
            weight=r.split.weight,
            generation=r.generation,
        )

    def load(self) -> None:
        self.routes.load()

    async def serve(self, req: wire.Request, out: ClientConn) -> None:
        """Answer one request on ``out``, then record what happened."""
        if admin.is_admin(req.target):
            out.send(await admin.answer(req, self.routes, self.telemetry, self.counters))
            return
        route = self.routes.current
        if route.stable is None:
            error = {"error": f"no route for system {self.system!r}: the router has no stable revision yet"}
            out.send(wire.json(503, error, keep_alive=req.keep_alive))
            return
        sp = route.split
        to_canary = split.to_canary(sp, req.headers, random.random)
        answer, legs = await fallback.forward(route, req, canary=to_canary)
        out.send(answer)
        said = None
        for leg in legs:
            said = self.recorder.leg(req, leg)
        if not to_canary and split.mirrored(sp, random.random):
            self.mirrors.spawn(route, req, said)

    async def close(self, *, grace: float = 5.0) -> None:
        """Let requests in flight finish (up to ``grace`` seconds), then drop every connection."""
        busy = [c.worker for c in self.clients if c.worker is not None]
        if busy:
            await asyncio.wait(busy, timeout=grace)
        self.mirrors.cancel()
        for c in list(self.clients):
            c.close()
        for up in self.routes.upstreams.values():
            up.retire()

    def sweep(self, now: float) -> None:
        """Close client connections idle (or stalled mid-request) for ``CLIENT_IDLE_S``."""
        for c in [c for c in self.clients if c.worker is None and now - c.last_active > CLIENT_IDLE_S]:
            c.close()


class ClientConn(asyncio.Protocol):
    """One client connection: parse requests (pipelined ones in order) and answer them in turn."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[wire.Request] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.last_active = time.monotonic()
        self.paused = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._expect = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass asyncio's
        self.router.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.router.clients.discard(self)
        self.transport = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # not supported: serve what was parsed, then close
            if self.queue:
                self.queue[-1].keep_alive = False
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
        if self._expect:
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > wire.MAX_BODY:
            raise wire.Reject(413, f"request body over {wire.MAX_BODY} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        keep = self.parser.should_keep_alive()
        req = wire.Request(self.parser.get_method(), self._url, self._headers, body, keep_alive=keep)
        self._enqueue(req)

    def _enqueue(self, req: wire.Request) -> None:
        self.queue.append(req)
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._work())
        if len(self.queue) > 16:  # a client pipelining without reading: stop reading until we catch up
            self._stop_reading()

    async def _work(self) -> None:
        try:
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
            log.exception("unexpected error while serving a request")
            self.send(wire.json(500, {"error": "internal router error"}, keep_alive=False))
            self.close()
        finally:
            self.worker = None
            self.last_active = time.monotonic()


async def run(*, host: str, port: int, system: str, state: Path | None, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set, then drain and close."""
    router = Router(system, state=state)
    router.load()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ClientConn(router), host, port, backlog=2048)
    bound = server.sockets[0].getsockname()[1] if server.sockets else port
    log.info(
        "modship router for %s on http://%s:%d (generation %d, state %s)",
        system,
        host,
        bound,
        router.routes.current.generation,
        state,
    )

    async def sweeper() -> None:
        while True:
            await asyncio.sleep(5.0)
            router.sweep(time.monotonic())

    sweep = loop.create_task(sweeper())
    try:
        await stop.wait()
    finally:
        sweep.cancel()
        server.close()
        await router.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await server.wait_closed()
