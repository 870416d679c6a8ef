"""The web dashboard: static files under ``/dashboard/`` and the live feed ``/v1/events/stream``.

The page is plain HTML, CSS and JavaScript shipped in the wheel (``controller/dashboard/static``):
no CDN, no build step. It talks to the same control API as the CLI, from the same origin, and
authenticates with the same bearer token: the user pastes it on the login form, or ``modship
dashboard`` opens ``/dashboard/#token=...`` — a URL *fragment*, which browsers never send to a
server (so it is in no access log), and which the page moves into ``sessionStorage`` (gone when
the tab closes) and wipes from the address bar at once. No cookie is ever set, so a request
forged by another site carries no credential.

The static files themselves are public (they hold no data); everything under ``/v1`` needs the
token. ``/v1/events/stream`` is server-sent events, read with ``fetch`` (an ``EventSource`` cannot
send an Authorization header): one ``change`` event naming the systems whose state changed, within
``Watch.interval`` of the change, and a comment every ``HEARTBEAT_S`` to keep proxies from closing it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from controller.apply.watch import Watch

STATIC = Path(__file__).resolve().parents[1] / "dashboard" / "static"
PUBLIC = ("/metrics", "/", "/dashboard")  # with everything under /dashboard/: no token needed
HEARTBEAT_S = 15.0
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "cache-control": "no-cache",
}


class _Secured:
    """Static files with a strict content security policy (scripts and styles from this origin only)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])  # type: ignore[call-overload]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)  # type: ignore[arg-type]


def routes(watch: Watch) -> list[BaseRoute]:
    async def stream(request: Request) -> Response:
        return StreamingResponse(
            _events(watch, request),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def home(request: Request) -> Response:
        return RedirectResponse("/dashboard/")

    return [
        Route("/v1/events/stream", stream, methods=["GET"]),
        Route("/", home, methods=["GET"]),
        Route("/dashboard", home, methods=["GET"]),
        Mount("/dashboard", app=_Secured(StaticFiles(directory=STATIC, html=True)), name="dashboard"),
    ]


async def _events(watch: Watch, request: Request) -> AsyncIterator[str]:
    yield f"retry: 1000\nevent: hello\ndata: {json.dumps({'interval': watch.interval})}\n\n"
    async with watch.subscribe() as q:
        while not await request.is_disconnected():
            try:
                changed = await asyncio.wait_for(q.get(), timeout=HEARTBEAT_S)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            yield f"event: change\ndata: {json.dumps({'systems': changed})}\n\n"
