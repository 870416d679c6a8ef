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
import bisect
import contextlib
import hashlib
import logging
import os
import random
import socket
import time
from collections import deque
from http import HTTPStatus
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs

import httptools
import orjson
import pydantic

from controller.plan import telemetry
from controller.spec.routing import RouterConfig

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
PROM_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

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


# -- Prometheus counters ----------------------------------------------------------------------------


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Counters:
    """Cumulative counters for ``GET /metrics`` (routed traffic; mirrored copies are counted apart)."""

    def __init__(self, system: str) -> None:
        self.system = system
        self.requests: dict[tuple[str, str, str], int] = {}
        self.latency: dict[tuple[str, str], list[int]] = {}
        self.latency_sum: dict[tuple[str, str], float] = {}
        self.fallbacks: dict[str, int] = {}
        self.mirrored: dict[str, int] = {}
        self.disagreements: dict[str, int] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}

    @staticmethod
    def inc(table: dict[Any, int], key: Any) -> None:
        table[key] = table.get(key, 0) + 1

    def observe(self, revision: str, role: str, seconds: float) -> None:
        key = (revision, role)
        counts = self.latency.get(key)
        if counts is None:
            counts = self.latency[key] = [0] * len(telemetry.LATENCY_EDGES)
        counts[bisect.bisect_right(telemetry.LATENCY_EDGES, seconds) - 1] += 1
        self.latency_sum[key] = self.latency_sum.get(key, 0.0) + seconds

    def render(self, route: Route) -> bytes:
        s = f'system="{_esc(self.system)}"'
        out: list[str] = []

        def family(name: str, kind: str, doc: str) -> None:
            out.extend((f"# HELP {name} {doc}", f"# TYPE {name} {kind}"))

        def labels(**kv: str) -> str:
            return "{" + ",".join([s, *(f'{k}="{_esc(v)}"' for k, v in kv.items())]) + "}"

        family("modship_router_requests_total", "counter", "Requests answered per revision (or failed: 502/504).")
        out += [
            f"modship_router_requests_total{labels(revision=r, role=ro, code=c)} {n}"
            for (r, ro, c), n in sorted(self.requests.items())
        ]
        family("modship_router_request_duration_seconds", "histogram", "Upstream request latency.")
        hist = "modship_router_request_duration_seconds"
        cut = [telemetry.LATENCY_EDGES.index(le) for le in PROM_BUCKETS]
        for (r, ro), counts in sorted(self.latency.items()):
            out += [
                f"{hist}_bucket{labels(revision=r, role=ro, le=repr(le))} {sum(counts[:i])}"
                for le, i in zip(PROM_BUCKETS, cut, strict=True)
            ]
            out += [
                f"{hist}_bucket{labels(revision=r, role=ro, le='+Inf')} {sum(counts)}",
                f"{hist}_count{labels(revision=r, role=ro)} {sum(counts)}",
                f"{hist}_sum{labels(revision=r, role=ro)} {self.latency_sum[(r, ro)]!r}",
            ]
        for name, table, doc in (
            ("fallbacks", self.fallbacks, "Canary failures retried on stable."),
            ("mirrored", self.mirrored, "Requests mirrored to the canary."),
            ("disagreements", self.disagreements, "Mirrored requests whose label differed from stable's."),
        ):
            family(f"modship_router_{name}_total", "counter", doc)
            out += [f"modship_router_{name}_total{labels(revision=r)} {n}" for r, n in sorted(table.items())]
        family("modship_router_upstream_errors_total", "counter", "Failed upstream attempts by kind.")
        out += [
            f"modship_router_upstream_errors_total{labels(revision=r, kind=k)} {n}"
            for (r, k), n in sorted(self.upstream_errors.items())
        ]
        family("modship_router_weight", "gauge", "Percent of requests routed to each revision.")
        if route.stable is not None:
            out.append(
                f"modship_router_weight{labels(revision=route.stable_rev, role='stable')} "
                f"{100.0 - route.weight if route.canary else 100.0!r}"
            )
        if route.canary is not None:
            out.append(f"modship_router_weight{labels(revision=route.canary_rev, role='canary')} {route.weight!r}")
        family("modship_router_config_generation", "gauge", "Generation of the applied configuration.")
        out.append(f"modship_router_config_generation{{{s}}} {route.generation}")
        return ("\n".join(out) + "\n").encode()


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


async def run(
    *, host: str, port: int, system: str, state: Path | None, stop: asyncio.Event, sock: socket.socket | None = None
) -> None:
    """Serve until ``stop`` is set, then drain and close; on ``sock`` (already listening) if given."""
    router = Router(system, state=state)
    router.load()
    loop = asyncio.get_running_loop()
    if sock is not None:
        server = await loop.create_server(lambda: ClientConn(router), sock=sock, backlog=2048)
    else:
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
