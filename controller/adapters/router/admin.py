"""The admin API, never proxied: ``GET|PUT /-/modship/config``, ``GET /-/modship/healthz``,
``GET /-/modship/telemetry?window=S`` (format in ``controller.plan.telemetry``), ``GET /metrics``,
``GET /-/modship/livez`` (the process answers) and ``GET /-/modship/readyz`` (it has a stable
revision to route to: a Kubernetes readiness probe keeps clients away from an unconfigured router).

With a token (``MODSHIP_ROUTER_TOKEN``: always in a cluster, where any pod could reach the router),
every admin request but ``livez``, ``readyz`` and ``/metrics`` (counts only, for Prometheus) needs the header
``x-modship-token`` with it; a missing or wrong one is answered 401. The header is not
``Authorization``: the Kubernetes API server's pod proxy, through which the operator configures
routers, keeps the caller's own credential for itself.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any
from urllib.parse import parse_qs

from controller.adapters.router import metrics, wire
from controller.adapters.router.route import Routes
from controller.adapters.router.upstream import Upstream, UpstreamError
from controller.plan import telemetry

PROBE_TIMEOUT_S = 0.5
PROBE = b"GET /readyz HTTP/1.1\r\nhost: modship-router\r\n\r\n"
PATHS = (
    b"/-/modship/config",
    b"/-/modship/healthz",
    b"/-/modship/telemetry",
    b"/metrics",
    b"/-/modship/livez",
    b"/-/modship/readyz",
)
OPEN = (b"/-/modship/livez", b"/-/modship/readyz", b"/metrics")  # never need the token
TOKEN_HEADER = b"x-modship-token"


PREFIXES = (b"/-/modship/", b"/metrics")  # what every admin target starts with (``is_admin`` decides)


def is_admin(target: bytes) -> bool:
    return target.startswith(b"/-/modship/") or target == b"/metrics" or target.startswith(b"/metrics?")


async def _check(role: str, up: Upstream | None, rev: str) -> tuple[str, dict[str, Any]] | None:
    if up is None:
        return None
    try:
        resp = await up.send(PROBE, timeout=PROBE_TIMEOUT_S)
    except UpstreamError as exc:
        return role, {"revision": rev, "url": up.url, "reachable": False, "ready": False, "error": str(exc)}
    return role, {"revision": rev, "url": up.url, "reachable": True, "ready": resp.status == 200}


async def health(routes: Routes) -> dict[str, Any]:
    route = routes.current
    results = await asyncio.gather(
        _check("stable", route.stable, route.stable_rev), _check("canary", route.canary, route.canary_rev)
    )
    return {
        "status": "ok",
        "system": routes.system,
        "generation": route.generation,
        "upstreams": dict(r for r in results if r is not None),
    }


def authorized(req: wire.Request, token: bytes | None) -> bool:
    """Whether ``req`` may use the admin API: no token configured, or the right one sent."""
    if token is None:
        return True
    sent = next((v for n, v in req.headers if n == TOKEN_HEADER), None)
    return sent is not None and hmac.compare_digest(sent, token)


async def answer(
    req: wire.Request,
    routes: Routes,
    tel: telemetry.Telemetry,
    counters: metrics.Counters,
    *,
    token: bytes | None = None,
) -> bytes:
    path, _, query = req.target.partition(b"?")
    keep, get = req.keep_alive, req.method == b"GET"
    if path == b"/-/modship/livez" and get:
        return wire.json(200, {"status": "ok"}, keep_alive=keep)
    if path == b"/-/modship/readyz" and get:
        ready = routes.current.stable is not None
        return wire.json(200 if ready else 503, {"ready": ready}, keep_alive=keep)
    if path not in OPEN and not authorized(req, token):
        return wire.json(401, {"error": "the router's admin API needs its token in x-modship-token"}, keep_alive=keep)
    if path == b"/-/modship/config" and req.method == b"PUT":
        status, doc = routes.put(req.body)
        return wire.json(status, doc, keep_alive=keep)
    if path == b"/-/modship/config" and get:
        config = routes.current.config
        if config is None:
            return wire.json(404, {"error": "no config yet"}, keep_alive=keep)
        # canaryWarming: the canary gets nothing yet (not reachable so far; ``route``)
        return wire.json(200, {**config.wire(), "canaryWarming": routes.current.warming}, keep_alive=keep)
    if path == b"/-/modship/healthz" and get:
        return wire.json(200, await health(routes), keep_alive=keep)
    if path == b"/-/modship/telemetry" and get:
        try:
            window = float(parse_qs(query.decode()).get("window", ["60"])[0])
        except ValueError:
            return wire.json(400, {"error": "window must be a number of seconds"}, keep_alive=keep)
        doc = tel.snapshot(now=time.time(), window=window, generation=routes.current.generation)
        return wire.json(200, doc, keep_alive=keep)
    if path == b"/metrics" and get:
        return wire.response(200, counters.render(), keep_alive=keep, ctype=metrics.CONTENT_TYPE)
    known = path in PATHS
    return wire.json(405 if known else 404, {"error": "method not allowed" if known else "not found"}, keep_alive=keep)
