"""The local router: one per system, an HTTP/1.1 reverse proxy on a stable loopback port in front of
the stable and the canary revision (``bentoml serve`` processes).

    client ─▶ router ─┬─ header route / weight (sticky hash or random) ─▶ canary ─(5xx, refused,
                      │                                                         timeout)─▶ stable
                      └──────────────────────────────────────────────────▶ stable ─(mirror %)─▶ canary

Requests are buffered (``MAX_BODY``) so a failed canary attempt can be replayed on stable: the
client gets stable's answer, the failure still counts against the canary (zero-loss fallback).
Responses are buffered as well and sent with a Content-Length. Mirrored copies run in the background
after the client has its answer; the canary's predicted labels are compared with stable's, then its
answer is discarded.
Telemetry and Prometheus counters are recorded after the answer is written; nothing is logged per
request. A configuration is swapped atomically: requests in flight finish on the upstream they
started on.

Admin API, never proxied: ``GET|PUT /-/modship/config``, ``GET /-/modship/healthz``,
``GET /-/modship/telemetry?window=S`` (format in ``controller.plan.telemetry``), ``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import deque
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs

import httptools
import orjson
import pydantic

from controller.adapters.router_http import (
    _HOP_BY_HOP,
    CLIENT_IDLE_S,
    MAX_BODY,
    MAX_HEADER_BYTES,
    MAX_MIRRORS_IN_FLIGHT,
    PROBE_TIMEOUT_S,
    Attempt,
    Request,
    Upstream,
    UpstreamError,
    _json,
    _Reject,
    _response,
    bucket,
)
from controller.adapters.router_metrics import Counters
from controller.plan import telemetry
from controller.spec.routing import RouterConfig

log = logging.getLogger("modship.router")

# -- routing ----------------------------------------------------------------------------------------


class Route:
    """An applied configuration, immutable; requests take one snapshot and keep it."""

    def __init__(self, config: RouterConfig | None, upstreams: dict[str, Upstream]) -> None:
        self.config = config
        self.generation = config.generation if config else -1
        stable, canary = (config.stable, config.canary) if config else (None, None)
        self.stable = upstreams[stable.url] if stable else None
        self.canary = upstreams[canary.url] if canary else None
        self.stable_rev = stable.revision if stable else ""
        self.canary_rev = canary.revision if canary else ""
        self.weight = config.weight if config else 0.0
        self.timeout = config.timeout_seconds if config else 30.0
        self.fallback = bool(config and config.fallback)
        self.mirror = config.mirror.percent if config and config.mirror else 0.0
        hr = config.header_route if config else None
        self.route_name = hr.name.encode() if hr else None
        self.route_value = hr.value.encode() if hr and hr.value is not None else None
        sticky = config.sticky if config else None
        self.sticky_header = sticky.header.encode() if sticky and sticky.header else None
        self.sticky_cookie = sticky.cookie.encode() if sticky and sticky.cookie else None

    def to_canary(self, req: Request) -> bool:
        if self.canary is None:
            return False
        if self.route_name is not None:
            v = req.header(self.route_name)
            if v is not None and (self.route_value is None or v == self.route_value):
                return True
        w = self.weight
        if w <= 0 or w >= 100:
            return w >= 100
        key = req.header(self.sticky_header) if self.sticky_header else None
        if key is None and self.sticky_cookie is not None:
            key = req.cookie(self.sticky_cookie)
        return (bucket(key) if key else random.random() * 100) < w


# -- the router -------------------------------------------------------------------------------------


class Router:
    """Routing state, telemetry and the admin API of one system's router."""

    def __init__(self, system: str, *, state: Path | None = None) -> None:
        self.system = system
        self.state = state
        self.upstreams: dict[str, Upstream] = {}
        self.route = Route(None, {})
        self.telemetry = telemetry.Telemetry()
        self.counters = Counters(system)
        self.clients: set[ClientConn] = set()
        self._mirrors: set[asyncio.Task[None]] = set()

    # configuration

    def load(self) -> None:
        """Apply the persisted configuration, if any (a restarted router serves immediately)."""
        if self.state is None or not self.state.exists():
            return
        try:
            config = RouterConfig.model_validate_json(self.state.read_bytes())
        except (OSError, pydantic.ValidationError) as exc:
            log.warning("ignoring unreadable router state %s: %s", self.state, exc)
            return
        if config.system != self.system:
            log.warning("ignoring router state %s: it is for system %r", self.state, config.system)
            return
        self.apply(config)

    def _persist(self, config: RouterConfig) -> None:
        if self.state is None:
            return
        self.state.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state.with_name(f".{self.state.name}.tmp")
        with tmp.open("wb") as f:
            f.write(orjson.dumps(config.wire(), option=orjson.OPT_INDENT_2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state)

    def apply(self, config: RouterConfig) -> None:
        wanted = {u.url: u for u in (config.stable, config.canary) if u is not None}
        upstreams = {url: self.upstreams.get(url) or Upstream(url, u.host, u.port) for url, u in wanted.items()}
        for url, old in self.upstreams.items():
            if url not in upstreams:
                old.retire()
        self.upstreams = upstreams
        self.route = Route(config, upstreams)
        for u, role in ((config.stable, "stable"), (config.canary, "canary")):
            if u is not None:
                self.telemetry.record(u.revision, role)
        keep = [u.revision for u in (config.stable, config.canary) if u is not None]
        self.telemetry.forget_before(int(time.time()) - telemetry.HORIZON_S, keep=keep)
        log.info("applied generation %d: %s", config.generation, self._describe(config))

    @staticmethod
    def _describe(c: RouterConfig) -> str:
        if c.stable is None:
            return "no stable revision"
        if c.canary is None:
            return f"100% {c.stable.revision}"
        extra = [
            f"header {c.header_route.name}" if c.header_route else "",
            f"mirror {c.mirror.percent:g}%" if c.mirror else "",
        ]
        return " ".join(
            [f"{c.stable.revision} {100 - c.weight:g}% / {c.canary.revision} {c.weight:g}%", *(e for e in extra if e)]
        )

    def put_config(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            config = RouterConfig.model_validate_json(body)
        except pydantic.ValidationError as exc:
            return 400, {
                "error": "invalid router config",
                "detail": orjson.loads(exc.json(include_url=False)),
            }
        if config.system != self.system:
            return 400, {"error": f"config is for system {config.system!r}; this router serves {self.system!r}"}
        if config.generation < self.route.generation:
            return 409, {
                "error": f"generation {config.generation} is older than {self.route.generation}",
                "generation": self.route.generation,
            }
        try:
            self._persist(config)
        except OSError as exc:
            return 500, {"error": f"cannot persist the config: {exc}"}
        self.apply(config)
        return 200, {"generation": config.generation}

    # admin API

    async def health(self) -> dict[str, Any]:
        route = self.route
        probe = b"GET /readyz HTTP/1.1\r\nhost: modship-router\r\n\r\n"

        async def check(role: str, up: Upstream | None, rev: str) -> tuple[str, dict[str, Any]] | None:
            if up is None:
                return None
            try:
                resp = await up.send(probe, timeout=PROBE_TIMEOUT_S)
            except UpstreamError as exc:
                return role, {
                    "revision": rev,
                    "url": up.url,
                    "reachable": False,
                    "ready": False,
                    "error": str(exc),
                }
            return role, {"revision": rev, "url": up.url, "reachable": True, "ready": resp.status == 200}

        results = await asyncio.gather(
            check("stable", route.stable, route.stable_rev), check("canary", route.canary, route.canary_rev)
        )
        return {
            "status": "ok",
            "system": self.system,
            "generation": route.generation,
            "upstreams": dict(r for r in results if r is not None),
        }

    async def admin(self, req: Request) -> bytes:
        path, _, query = req.target.partition(b"?")
        keep, get = req.keep_alive, req.method == b"GET"
        if path == b"/-/modship/config" and req.method == b"PUT":
            status, doc = self.put_config(req.body)
            return _json(status, doc, keep_alive=keep)
        if path == b"/-/modship/config" and get:
            config = self.route.config
            if config is None:
                return _json(404, {"error": "no config yet"}, keep_alive=keep)
            return _json(200, config.wire(), keep_alive=keep)
        if path == b"/-/modship/healthz" and get:
            return _json(200, await self.health(), keep_alive=keep)
        if path == b"/-/modship/telemetry" and get:
            try:
                window = float(parse_qs(query.decode()).get("window", ["60"])[0])
            except ValueError:
                return _json(400, {"error": "window must be a number of seconds"}, keep_alive=keep)
            doc = self.telemetry.snapshot(now=time.time(), window=window, generation=self.route.generation)
            return _json(200, doc, keep_alive=keep)
        if path == b"/metrics" and get:
            return _response(
                200,
                self.counters.render(self.route),
                keep_alive=keep,
                ctype=b"text/plain; version=0.0.4; charset=utf-8",
            )
        known = path in (b"/-/modship/config", b"/-/modship/healthz", b"/-/modship/telemetry", b"/metrics")
        return _json(405 if known else 404, {"error": "method not allowed" if known else "not found"}, keep_alive=keep)

    # proxying

    async def serve(self, req: Request, out: ClientConn) -> None:
        """Answer one request on ``out``, then record what happened."""
        target = req.target
        if target.startswith(b"/-/modship/") or target == b"/metrics" or target.startswith(b"/metrics?"):
            out.send(await self.admin(req))
            return
        route = self.route
        if route.stable is None:
            error = {"error": f"no route for system {self.system!r}: the router has no stable revision yet"}
            out.send(_json(503, error, keep_alive=req.keep_alive))
            return
        data = req.encode()
        if route.canary is not None and route.to_canary(req):
            tried = await Attempt.run(route.canary, data, req, route.timeout)
            if tried.kind is None or not route.fallback:
                out.send(tried.answer(req, route.canary_rev, b"canary"))
                self._record(route.canary_rev, "canary", req, tried)
                return
            served = await Attempt.run(route.stable, data, req, route.timeout)
            out.send(served.answer(req, route.stable_rev, b"canary-fallback"))
            self._record(route.canary_rev, "canary", req, tried, fallback=True)
            self._record(route.stable_rev, "stable", req, served)
            return
        served = await Attempt.run(route.stable, data, req, route.timeout)
        out.send(served.answer(req, route.stable_rev, b"stable"))
        answer = self._record(route.stable_rev, "stable", req, served)
        if route.mirror > 0 and route.canary is not None and random.random() * 100 < route.mirror:
            self._spawn_mirror(route, req, answer)

    def _record(
        self, revision: str, role: str, req: Request, tried: Attempt, *, fallback: bool = False, mirrored: bool = False
    ) -> telemetry.Answer | None:
        now = time.time()
        resp, kind, latency = tried.resp, tried.kind, tried.latency
        rec = self.telemetry.record(revision, role)
        rec.request(now, latency=latency, error=kind is not None, fallback=fallback, mirrored=mirrored)
        lengths = req.lengths()
        if lengths:
            rec.inputs(now, lengths)
        answer = None
        if resp is not None and 200 <= resp.status < 300 and resp.body:
            answer = telemetry.answer(resp.body)
            if answer is not None:
                rec.answered(now, answer)
        c = self.counters
        if kind is not None:
            c.inc(c.upstream_errors, (revision, kind))
        if mirrored:
            c.inc(c.mirrored, revision)
            return answer
        c.inc(c.requests, (revision, role, tried.code))
        if latency is not None:
            c.observe(revision, role, latency)
        if fallback:
            c.inc(c.fallbacks, revision)
        return answer

    def _spawn_mirror(self, route: Route, req: Request, stable: telemetry.Answer | None) -> None:
        if len(self._mirrors) >= MAX_MIRRORS_IN_FLIGHT:
            return
        task = asyncio.get_running_loop().create_task(self._mirror(route, req, stable))
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    async def _mirror(self, route: Route, req: Request, stable: telemetry.Answer | None) -> None:
        assert route.canary is not None
        data = req.encode(b"x-modship-mirror: 1\r\n")
        tried = await Attempt.run(route.canary, data, req, route.timeout)
        answer = self._record(route.canary_rev, "canary", req, tried, mirrored=True)
        if stable is not None and stable.labels and answer is not None and answer.labels:
            disagreed = answer.labels != stable.labels
            self.telemetry.record(route.canary_rev, "canary").compared(time.time(), disagreed=disagreed)
            if disagreed:
                self.counters.inc(self.counters.disagreements, route.canary_rev)

    async def close(self, *, grace: float = 5.0) -> None:
        """Let requests in flight finish (up to ``grace`` seconds), then drop every connection."""
        busy = [c.worker for c in self.clients if c.worker is not None]
        if busy:
            await asyncio.wait(busy, timeout=grace)
        for task in list(self._mirrors):
            task.cancel()
        for c in list(self.clients):
            c.close()
        for up in self.upstreams.values():
            up.retire()

    def sweep(self, now: float) -> None:
        """Close client connections idle (or stalled mid-request) for ``CLIENT_IDLE_S``."""
        for c in [c for c in self.clients if c.worker is None and now - c.last_active > CLIENT_IDLE_S]:
            c.close()


# -- client side ------------------------------------------------------------------------------------


class ClientConn(asyncio.Protocol):
    """One client connection: parse requests (pipelined ones in order) and answer them in turn."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[Request] = deque()
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
            reject = exc.__context__ if isinstance(exc.__context__, _Reject) else _Reject(400, f"bad request: {exc}")
            self._enqueue(Request(b"", b"", [], b"", keep_alive=False, reject=reject))
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
        if self._size > MAX_HEADER_BYTES:
            raise _Reject(431, f"request headers over {MAX_HEADER_BYTES} bytes")
        name = name.lower()
        if name in _HOP_BY_HOP:
            self._expect = self._expect or (name == b"expect" and value.lower() == b"100-continue")
            return
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._size = 0
        if self._expect:
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_BODY:
            raise _Reject(413, f"request body over {MAX_BODY} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        keep = self.parser.should_keep_alive()
        req = Request(self.parser.get_method(), self._url, self._headers, body, keep_alive=keep)
        self._enqueue(req)

    def _enqueue(self, req: Request) -> None:
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
                    self.send(_json(req.reject.status, {"error": str(req.reject)}, keep_alive=False))
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
            self.send(_json(500, {"error": "internal router error"}, keep_alive=False))
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
        router.route.generation,
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
