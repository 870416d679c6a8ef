"""What every request to the local control API passes before a route sees it (an ASGI middleware).

In this order:

1. ``Origin``: a request carrying an Origin other than the controller's own is refused (403). A
   browser adds Origin to every cross-site request, so a web page the user happens to visit cannot
   drive the API even if it guessed a token; programs (the CLI) send no Origin.
2. ``Authorization: Bearer <token>``: missing or unknown → 401. The user it belongs to is put on
   ``request.state.user`` (``scope["state"]["user"]``) for the routes to record.
3. A mutating request (POST, PUT, PATCH, DELETE) must say ``Content-Type: application/json``, else
   415: a cross-site HTML form or a "simple" ``fetch`` can only send ``text/plain``,
   ``application/x-www-form-urlencoded`` or ``multipart/form-data`` without a CORS preflight, which
   this API never grants.

``public`` paths (and paths under ``public_prefixes``: the dashboard's static files, which hold no
data) skip 2 (the origin and content-type rules still hold): ``/metrics``, which exposes
only process counts, memory and crash counters by system and revision id (no users, tokens,
reasons or specs), so that a Prometheus can scrape it as it scrapes any exporter.
Refusals are ``{"error", "exitCode"}`` like every other error of the API, and name no secret.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from controller.errors import Denied

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
EXIT_DENIED = Denied.exit_code


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        user_of: Callable[[str], str | None],
        origins: Collection[str],
        public: Collection[str] = ("/metrics",),
        public_prefixes: Collection[str] = (),
    ) -> None:
        self.app = app
        self.user_of = user_of
        self.origins = frozenset(o.rstrip("/").lower() for o in origins)
        self.public = frozenset(public)
        self.public_prefixes = tuple(public_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            status, message = refusal
            await _refuse(send, status, message)
            return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        """(status, message) when the request is refused; else None (and the user is on the scope)."""
        origin = headers.get("origin")
        if origin is not None and origin.rstrip("/").lower() not in self.origins:
            return 403, f"requests from origin {origin[:100]!r} are not accepted"
        if scope["path"] not in self.public and not scope["path"].startswith(self.public_prefixes):
            user = self._authenticated(headers.get("authorization", ""))
            if user is None:
                return 401, "a valid token is required (Authorization: Bearer <token>; see `modship token`)"
            scope.setdefault("state", {})["user"] = user
        if scope["method"] in MUTATING and media_type(headers.get("content-type", "")) != "application/json":
            return 415, "a request that changes something must be JSON (Content-Type: application/json)"
        return None

    def _authenticated(self, authorization: str) -> str | None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.user_of(token.strip())


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def own_origins(scheme: str, host: str, port: int) -> list[str]:
    """The origins a page served by the controller itself has: its address, and on loopback the
    other names of loopback too (a browser at http://localhost:P talks to http://127.0.0.1:P)."""
    names = {host}
    if host in ("127.0.0.1", "localhost", "::1", "[::1]"):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    return sorted(f"{scheme}://{h if ':' not in h or h.startswith('[') else f'[{h}]'}:{port}" for h in names)


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in scope.get("headers", []):
        out.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
    return out


async def _refuse(send: Send, status: int, message: str) -> None:
    code = 2 if status == 415 else EXIT_DENIED  # 415 is bad input; 401 and 403 are refusals
    body = json.dumps({"error": message, "exitCode": code}).encode()
    head: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        head.append((b"www-authenticate", b'Bearer realm="modship"'))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})
