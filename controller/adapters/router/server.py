"""The router's server: client connections (httptools on the event loop, pipelined requests
answered in order) and ``Router``, which ties the applied route, the split, fallback, mirroring,
recording and the admin API together for one system.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import random
import socket
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Final, cast

from controller.adapters import connkeep
from controller.adapters.router import admin, fallback, kept, metrics, recorder, split, wire
from controller.adapters.router.client import ClientConn
from controller.adapters.router.mirror import Mirrors
from controller.adapters.router.recorder import Recorder
from controller.adapters.router.route import Route, Routes
from controller.adapters.router.upstream import MAX_IDLE_PER_UPSTREAM as MAX_IDLE
from controller.adapters.router.upstream import Connection, Upstream, UpstreamError
from controller.plan import telemetry

log = logging.getLogger("modship.router")

CLIENT_IDLE_S: Final = 75.0  # close idle (or stalled) client connections after this
BACKLOG: Final = 2048
# what the fast path calls for every request, bound once: a compiled module reads these directly,
# where ``time.monotonic`` is an attribute lookup on a module per call
_monotonic: Final = time.monotonic
_random: Final = random.random
_partial: Final = functools.partial
_ADMIN: Final = admin.PREFIXES


Flight = tuple[Route, wire.Request, ClientConn, Upstream, Connection, float]  # a request on the fast path, sent at


class Router:
    """Routing state, telemetry and the admin API of one system's router."""

    def __init__(
        self, system: str, *, state: Path | None = None, token: bytes | None = None, keeper: kept.Kept | None = None
    ) -> None:
        self.system = system
        self.token = token  # of the admin API (see ``admin``); None: loopback only, no token
        self.kept = keeper
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

    def _decide(self, route: Route, req: wire.Request) -> bool:
        if req.canary is None:
            req.canary = route.canary is not None and split.to_canary(
                route.split, req.headers if route.split.keyed else (), _random
            )
        return req.canary

    def fast(self, req: wire.Request, out: ClientConn) -> bool:
        """Answer ``req`` through callbacks when an idle connection to the chosen upstream is at hand
        (the common case under load): no task, no future. False: ``serve`` answers it.

        This and ``_fast_done`` run for nearly every request, so they take the common case in as
        few calls as they can: on a process woken from idle (one connection: every request), each
        call and object touched costs microseconds of cold caches, several times what it costs in a
        warm loop. So a plain weighted draw (``Route.draw``), taking and returning a pooled
        connection (``Upstream.take``, ``release``), relaying the answer (``wire.relay``), writing it
        (``ClientConn.reply``) and stamping it for the recorder (``Recorder.pending``) are written out
        here for the common case, and call those for any other. (Where the router runs compiled,
        ``native``, calls cost little; in the images it runs its Python.)"""
        route = self.routes.current
        target = req.target
        if route.stable is None or (target.startswith(_ADMIN) and admin.is_admin(target)):
            return False
        if route.draw is not None and req.canary is None:
            req.canary = canary = _random() * 100 < route.draw
        else:
            canary = self._decide(route, req)
        up = route.canary if canary and route.canary is not None else route.stable
        now = _monotonic()
        conn = up.take(now)
        if conn is None:
            return False
        done = _partial(self._fast_done, (route, req, out, up, conn, now))
        try:
            conn.request(req.encode() if req.raw is None else req.raw, route.timeout, req.method == b"HEAD", done)
        except Exception:  # a transport closing under us: the slow path connects afresh
            conn.close()
            return False
        return True

    def _fast_done(self, flight: Flight, resp: wire.Response | None, exc: UpstreamError | None) -> None:
        """The common case: the chosen revision answered and its answer is the client's (what
        ``fallback.served`` and ``_answer`` do, without their objects: the recorder makes them)."""
        route, req, out, up, conn, t0 = flight
        try:
            if resp is None or (resp.status >= 500 and req.canary and route.fallback):
                self._fast_failed(flight, resp, exc)
                return
            now = _monotonic()
            if resp.keep_alive and not up.retired and len(up.idle) < MAX_IDLE:  # ``up.release``
                conn.since = now
                up.idle.append(conn)
            else:
                conn.close()
            role = "canary" if req.canary else "stable"
            key = b"canary" if req.canary else b"stable"
            notable = resp.notable
            if req.keep_alive and req.raw is not None and notable is wire.LENGTH_ONLY:  # ``wire.relay``
                answer = b"".join((resp.head[:-2], route.tails[key], b"\r\n", resp.body))
            elif req.keep_alive and req.raw is not None and notable is wire.LENGTH_AND_REVISION:  # the revision named
                answer = b"".join((resp.head[:-2], route.routed[key], b"\r\n", resp.body))
            else:
                answer = wire.relay(resp, tail=route.tails[key], keep_alive=req.keep_alive, head=req.method == b"HEAD")
            t = out.transport
            if out.slot is None and t is not None and req.keep_alive and not out.queue and not t.is_closing():
                # ``out.reply``
                t.write(answer)
                out.busy = False
                out.last_active = now
            else:
                out.reply(req, answer)
            rec = self.recorder
            revision = route.canary_rev if req.canary else route.stable_rev
            rec.pending.append((now, req, (revision, role, resp, now - t0)))
            if rec.timer is None or len(rec.pending) >= recorder.BATCH:
                rec.due()
            if not req.canary and route.split.mirror and split.mirrored(route.split, _random):
                self.mirrors.spawn(route, req, fallback.Attempt(resp, fallback.kind(resp), now - t0))
        except Exception:
            out.failed()

    def _fast_failed(self, flight: Flight, resp: wire.Response | None, exc: UpstreamError | None) -> None:
        route, req, out, up, conn, t0 = flight
        if resp is None:
            conn.close()
            if exc is not None and exc.stale:  # a reused connection had died: start over on a fresh one
                out.hand_over(req, self.serve(req, out))
                return
            kind = exc.kind if exc is not None else "connect"
            tried = fallback.Attempt(None, kind, None if kind == "connect" else time.monotonic() - t0)
        else:  # a canary's 5xx, to fall back from
            tried = fallback.Attempt(up.release(conn, resp, time.monotonic()), "status5xx", time.monotonic() - t0)
        if req.canary and tried.kind is not None and route.fallback:
            out.hand_over(req, self._fall_back(route, req, out, tried))
            return
        self._answer(route, req, out, (fallback.served(route, req, tried, canary=bool(req.canary)),))
        out.finished(req)

    async def _fall_back(self, route: Route, req: wire.Request, out: ClientConn, tried: fallback.Attempt) -> None:
        self._answer(route, req, out, await fallback.replay(route, req, tried))

    async def serve(self, req: wire.Request, out: ClientConn) -> None:
        """Answer one request on ``out``, then record what happened."""
        if admin.is_admin(req.target):
            self.recorder.flush()
            out.send(await admin.answer(req, self.routes, self.telemetry, self.counters, token=self.token))
            return
        route = self.routes.current
        if route.stable is None:
            error = {"error": f"no route for system {self.system!r}: the router has no stable revision yet"}
            out.send(wire.json(503, error, keep_alive=req.keep_alive))
            return
        self._answer(route, req, out, await fallback.forward(route, req, canary=self._decide(route, req)))

    def _answer(self, route: Route, req: wire.Request, out: ClientConn, legs: tuple[fallback.Leg, ...]) -> None:
        """Send the last leg's answer, record every leg, mirror what stable alone served."""
        out.send(legs[-1].answer)
        for leg in legs:
            self.recorder.later(req, leg)
        if not req.canary and split.mirrored(route.split, _random):
            self.mirrors.spawn(route, req, legs[-1].tried)

    async def close(self, *, grace: float = 5.0) -> None:
        """Let requests in flight finish (up to ``grace`` seconds), then drop every connection."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        busy = [c.worker for c in self.clients if c.worker is not None]
        if busy:
            await asyncio.wait(busy, timeout=grace)
        while any(c.busy for c in self.clients) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        self.mirrors.cancel()
        self.recorder.flush()
        for c in list(self.clients):
            c.close()
        for up in self.routes.upstreams.values():
            up.retire()

    async def resume(self, slot: int, sock: socket.socket) -> None:
        """Serve a connection the supervisor kept while the previous router process died: what its
        journal holds first (the requests answered already skipped, the last one again if its
        answer never left), then whatever comes next."""
        assert self.kept is not None
        data, answered, last = self.kept.journal.read(slot)
        written = connkeep.written(sock)
        verdict = connkeep.unsent(last, written) if last is not None and written is not None else "sent"
        if data is None or verdict == "torn":  # not replayable: overflowed, or an answer cut short
            why = "its requests outgrew the journal" if data is None else "an answer was written in part"
            log.info("closing a resumed connection: %s", why)
            kept.shut(sock.family, sock.fileno())
            sock.close()
            self.kept.release(slot)
            return
        if verdict == "unsent":
            answered -= 1
        conn = ClientConn(self, slot=slot, replay=(data, answered, written or 0))
        await asyncio.get_running_loop().connect_accepted_socket(lambda: cast(Any, conn), sock)

    def accepted(self, sock: socket.socket, slot: int | None) -> None:
        """Serve a connection ``kept.Acceptor`` accepted and handed over (in ``slot``).

        ``connect_accepted_socket`` is stepped by hand rather than by a task (one per connection
        otherwise): its first step opens the transport, its second returns once the protocol has
        ``connection_made``."""
        conn = ClientConn(self, slot=slot)
        self._step(asyncio.get_running_loop().connect_accepted_socket(lambda: cast(Any, conn), sock), conn, sock)

    def _step(self, opening: Coroutine[Any, Any, object], conn: ClientConn, sock: socket.socket) -> None:
        try:
            waiter = opening.send(None)
        except StopIteration:
            return
        except Exception as exc:  # gone before it was served: nothing was read
            log.debug("accepted connection dropped: %r", exc)
            sock.close()  # a no-op once the transport had it (it detaches the socket when it closes)
            if conn.slot is not None and self.kept is not None:  # not released by ``connection_lost``
                self.kept.release(conn.slot)
                conn.slot = None
            return
        waiter.add_done_callback(lambda _: self._step(opening, conn, sock))

    def sweep(self, now: float) -> None:
        """Close client connections idle (or stalled mid-request) for ``CLIENT_IDLE_S``."""
        idle = [c for c in self.clients if c.worker is None and not c.busy and now - c.last_active > CLIENT_IDLE_S]
        for c in idle:
            c.close()


async def run(
    *,
    host: str,
    port: int,
    system: str,
    state: Path | None,
    stop: asyncio.Event,
    sock: socket.socket | None = None,
    token: bytes | None = None,
) -> None:
    """Serve until ``stop`` is set, then drain and close; on ``sock`` (already listening) if given."""
    keeper, resumed = kept.Kept.from_env()
    router = Router(system, state=state, token=token, keeper=keeper)
    router.load()
    gc.collect()
    gc.freeze()  # what startup allocated is never garbage: later collections need not walk it
    loop = asyncio.get_running_loop()
    server: asyncio.Server | None = None
    acceptor: kept.Acceptor | None = None
    if keeper is not None:  # each connection handed over as it is accepted
        sock = sock if sock is not None else socket.create_server((host, port))
        acceptor = kept.Acceptor(sock, keeper, router.accepted, backlog=BACKLOG)
        bound = sock.getsockname()[1]
    else:
        if sock is not None:  # held by the local runtime's supervisor across restarts of this process
            server = await loop.create_server(lambda: cast(Any, ClientConn(router)), sock=sock, backlog=BACKLOG)
        else:
            server = await loop.create_server(lambda: cast(Any, ClientConn(router)), host, port, backlog=BACKLOG)
        socks = getattr(server, "sockets")  # noqa: B009 - uvloop gives a list where the stubs say tuple (compiled: checked)
        bound = socks[0].getsockname()[1] if socks else port
    for slot, client in resumed:
        await router.resume(slot, client)
    log.info(
        "modship router for %s on http://%s:%d (generation %d, state %s, %s)",
        system,
        host,
        bound,
        router.routes.current.generation,
        state,
        "no connection kept" if keeper is None else f"{len(resumed)} connections resumed",
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
        if acceptor is not None:
            acceptor.close()
        if server is not None:
            server.close()
        await router.close()
        if server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await server.wait_closed()
