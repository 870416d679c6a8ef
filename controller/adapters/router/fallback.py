"""Zero-loss fallback: one request to the revision the split chose, and, when a canary attempt
fails (refused, 5xx, timeout) and the route allows it, the same bytes replayed on stable. The
client gets stable's answer; the canary's failure is still reported, as a leg of its own.
"""

from __future__ import annotations

import time
from typing import Final, NamedTuple

from controller.adapters.router import wire
from controller.adapters.router.route import Route
from controller.adapters.router.upstream import Upstream, UpstreamError

_CODES: Final = {status: str(status) for status in wire.REASONS}  # one string per status, not one per request


class Attempt:
    """One request sent to one upstream: the response (None when none came), the failure kind
    (``connect``, ``timeout``, ``status5xx`` or None) and the latency (None without a connection)."""

    __slots__ = ("kind", "latency", "resp")

    def __init__(self, resp: wire.Response | None, kind: str | None, latency: float | None) -> None:
        self.resp, self.kind, self.latency = resp, kind, latency

    @property
    def code(self) -> str:
        """The status for counters: the upstream's, or what a gateway answers (502, 504)."""
        if self.resp is None:
            return "504" if self.kind == "timeout" else "502"
        code = _CODES.get(self.resp.status)
        return code if code is not None else str(self.resp.status)

    def answer(self, req: wire.Request, revision: str, tail: bytes) -> bytes:
        """The bytes for the client: the upstream's response relayed, or a 502/504 error."""
        if self.resp is not None:
            return wire.relay(self.resp, tail=tail, keep_alive=req.keep_alive, head=req.method == b"HEAD")
        doc = {"error": f"revision {revision} did not answer ({self.kind})", "revision": revision}
        return wire.json(int(self.code), doc, keep_alive=req.keep_alive, extra=tail)


def kind(resp: wire.Response) -> str | None:
    """The failure kind of a response that came: ``status5xx`` or None."""
    return "status5xx" if resp.status >= 500 else None


async def attempt(up: Upstream, data: bytes, req: wire.Request, timeout: float) -> Attempt:
    t0 = time.perf_counter()
    try:
        resp = await up.send(data, timeout=timeout, head=req.method == b"HEAD")
    except UpstreamError as exc:
        return Attempt(None, exc.kind, None if exc.kind == "connect" else time.perf_counter() - t0)
    return Attempt(resp, kind(resp), time.perf_counter() - t0)


class Leg(NamedTuple):
    """One attempt, for telemetry: which revision, in which role, whether it fell back, and (for
    the attempt that answered the client) the bytes sent."""

    revision: str
    role: str
    tried: Attempt
    fallback: bool = False
    answer: bytes = b""


def served(route: Route, req: wire.Request, tried: Attempt, *, canary: bool) -> Leg:
    """The leg whose answer the client gets, as routed (no fallback)."""
    if canary:
        return Leg(
            route.canary_rev, "canary", tried, answer=tried.answer(req, route.canary_rev, route.tails[b"canary"])
        )
    return Leg(route.stable_rev, "stable", tried, answer=tried.answer(req, route.stable_rev, route.tails[b"stable"]))


async def replay(route: Route, req: wire.Request, failed: Attempt) -> tuple[Leg, Leg]:
    """The canary failed: the same request on stable, whose answer the client gets."""
    assert route.stable is not None
    tried = await attempt(route.stable, req.encode(), req, route.timeout)
    answer = tried.answer(req, route.stable_rev, route.tails[b"canary-fallback"])
    return Leg(route.canary_rev, "canary", failed, True), Leg(route.stable_rev, "stable", tried, answer=answer)


async def forward(route: Route, req: wire.Request, *, canary: bool) -> tuple[Leg, ...]:
    """Every attempt made for ``req``; the last one's answer is the client's."""
    up = route.canary if canary and route.canary is not None else route.stable
    assert up is not None
    tried = await attempt(up, req.encode(), req, route.timeout)
    if canary and tried.kind is not None and route.fallback:
        return await replay(route, req, tried)
    return (served(route, req, tried, canary=canary),)
