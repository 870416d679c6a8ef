"""The local controller's HTTP API: a route table over the ``Control`` port (``apply.local_control``).
Every CLI verb goes through it (on Kubernetes the same verbs patch the Rollout resource instead).

    GET    /v1/systems                      systems and their phase
    POST   /v1/systems                      deploy {"system": doc, "rollout": doc?, "port": int}
    GET    /v1/systems/{name}               status (the ``status -o json`` document)
    DELETE /v1/systems/{name}               stop its processes and forget it
    POST   /v1/systems/{name}/promote       {"modules": [...], "system": doc?, "full": bool, "force": bool}
    POST   /v1/systems/{name}/pause|resume|abort|retry|rollback|promote-full
    POST   /v1/systems/{name}/undo          {"toRevision": n?}
    POST   /v1/systems/{name}/toggle        {"flag": str, "enabled": bool, "percent": float}
    POST   /v1/systems/{name}/approve|reject  {"revision": str?}: a decision on the change awaiting approval
    GET    /v1/systems/{name}/history       revisions and outcomes
    GET    /v1/systems/{name}/events        the timeline
    GET    /v1/systems/{name}/modules?revision=N   the modules behind a revision (contracts, lineage...)
    GET    /v1/events/stream                server-sent events: which systems changed (the dashboard)
    GET    /dashboard/                      the web dashboard (static files, no token; see ``dashboard``)
    GET    /metrics                         the local runtime's processes, memory and crashes (no token)

Every request passes ``guard.Guard`` first: a token (``Authorization: Bearer``), no foreign
``Origin``, JSON bodies for everything that changes something. Every POST and DELETE body may carry
``"reason"``: with the user the token belongs to it is the request's ``Actor``, recorded in the
events and the history.

Errors are ``{"error": message, "exitCode": n}`` with 400 (bad input), 401 (no valid token), 403 (a
foreign origin; or, exit code 9, the governance policy refuses it), 404, 409 (a conflict: the
rollout's state does not allow the request now), 415 (not JSON), 503 or 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from controller import ports
from controller.apply.local_control import LocalControl
from controller.apply.local_controller import LocalController
from controller.apply.watch import Watch
from controller.entrypoints import dashboard, guard, runtime_metrics
from controller.errors import Conflict, Forbidden, ModshipError, NotFound, SpecError, Unavailable
from controller.spec import control
from controller.spec.control import Command, request

log = logging.getLogger("modship.api")
_STATUS = {SpecError: 400, Forbidden: 403, NotFound: 404, Conflict: 409, Unavailable: 503}

Handler = Callable[[str, dict[str, Any], dict[str, str], control.Actor], Any]


def _error(exc: ModshipError) -> JSONResponse:
    code = next((v for k, v in _STATUS.items() if isinstance(exc, k)), 409 if type(exc) is ModshipError else 400)
    return JSONResponse({"error": str(exc), "exitCode": exc.exit_code}, status_code=code)


async def _json(request: Request) -> dict[str, Any]:
    if not await request.body():
        return {}  # a DELETE or a command with nothing to add
    try:
        body = await request.json()
    except ValueError:
        raise SpecError("request body is not JSON") from None
    if not isinstance(body, dict):
        raise SpecError("request body must be a JSON object")
    return body


def _endpoint(fn: Handler) -> Any:
    async def endpoint(req: Request) -> JSONResponse:
        try:
            body = await _json(req) if req.method in guard.MUTATING else {}
            name = req.path_params.get("name", "")
            actor = control.request(control.Actor, {"user": req.state.user, "reason": body.get("reason")})
            result = await anyio.to_thread.run_sync(lambda: fn(name, body, dict(req.query_params), actor))
            return JSONResponse(_wire(result))
        except ModshipError as exc:
            return _error(exc)
        except Exception as exc:  # a bug: keep the traceback in the controller's log
            log.exception("%s %s failed", req.method, req.url.path)
            return JSONResponse(
                {"error": f"internal error: {type(exc).__name__}: {exc}", "exitCode": 70}, status_code=500
            )

    return endpoint


def _wire(result: Any) -> Any:
    if isinstance(result, control.Model):
        return result.wire()
    if isinstance(result, list):
        return [_wire(x) for x in result]
    return result


def _limit(q: dict[str, str]) -> int:
    try:
        return int(q.get("limit", "200"))
    except ValueError:
        raise SpecError(f"limit must be a number, got {q['limit']!r}", field="limit") from None


def _decision(body: dict[str, Any], approve: bool) -> control.ApproveRequest:
    return request(control.ApproveRequest, {"revision": body.get("revision"), "approve": approve})


def routes(ctl: ports.Control) -> list[Route]:
    """The ``Control`` port's verbs, for any backend (the local controller, or Kubernetes behind
    ``modship dashboard --context``)."""

    def command(cmd: Command) -> Handler:
        return lambda n, b, q, a: ctl.command(n, cmd, actor=a)

    table: list[tuple[str, str, Handler]] = [
        ("GET", "/v1/systems", lambda n, b, q, a: ctl.systems()),
        ("GET", "/v1/systems/{name}", lambda n, b, q, a: ctl.status(n)),
        (
            "POST",
            "/v1/systems/{name}/promote",
            lambda n, b, q, a: ctl.promote(n, request(control.PromoteRequest, b), actor=a),
        ),
        ("POST", "/v1/systems/{name}/undo", lambda n, b, q, a: ctl.undo(n, request(control.UndoRequest, b), actor=a)),
        (
            "POST",
            "/v1/systems/{name}/toggle",
            lambda n, b, q, a: ctl.toggle(n, request(control.ToggleRequest, b), actor=a),
        ),
        ("POST", "/v1/systems/{name}/approve", lambda n, b, q, a: ctl.approve(n, _decision(b, True), actor=a)),
        ("POST", "/v1/systems/{name}/reject", lambda n, b, q, a: ctl.approve(n, _decision(b, False), actor=a)),
        ("GET", "/v1/systems/{name}/history", lambda n, b, q, a: ctl.history(n)),
        ("GET", "/v1/systems/{name}/events", lambda n, b, q, a: ctl.events(n, limit=_limit(q))),
        ("GET", "/v1/healthz", lambda n, b, q, a: {"ok": True, "user": a.user}),
    ]
    table += [("POST", f"/v1/systems/{{name}}/{cmd.value}", command(cmd)) for cmd in Command]
    return [Route(path, _endpoint(fn), methods=[method]) for method, path, fn in table]


def local_routes(ctl: LocalControl) -> list[Route]:
    """What only the local runtime has: deploy, delete, and the modules behind a revision."""
    table: list[tuple[str, str, Handler]] = [
        ("POST", "/v1/systems", lambda n, b, q, a: ctl.deploy(request(control.DeployRequest, b), actor=a)),
        ("DELETE", "/v1/systems/{name}", lambda n, b, q, a: ctl.delete(n, actor=a)),
        ("GET", "/v1/systems/{name}/modules", lambda n, b, q, a: ctl.modules(n, _number(q, "revision"))),
    ]
    return [Route(path, _endpoint(fn), methods=[method]) for method, path, fn in table]


def _number(q: dict[str, str], key: str) -> int:
    try:
        return int(q[key])
    except (KeyError, ValueError):
        raise SpecError(f"{key} must be a revision number", field=key) from None


def app(c: LocalController, *, user_of: Callable[[str], str | None], origins: list[str]) -> Starlette:
    """The API behind its guard: ``user_of`` maps a presented token to its user (None: nobody's),
    ``origins`` are the controller's own (``guard.own_origins``). The dashboard's static files are
    public (they hold no data); everything under ``/v1`` needs a token."""

    async def metrics(request: Request) -> Response:
        body = await anyio.to_thread.run_sync(lambda: runtime_metrics.render(c))
        return Response(body, media_type=runtime_metrics.CONTENT_TYPE)

    ctl = LocalControl(c)
    return Starlette(
        routes=[
            *routes(ctl),
            *local_routes(ctl),
            Route("/metrics", metrics, methods=["GET"]),
            *dashboard.routes(Watch(c.store.fingerprint)),
        ],
        middleware=[
            Middleware(
                guard.Guard, user_of=user_of, origins=origins, public=dashboard.PUBLIC, public_prefixes=("/dashboard/",)
            )
        ],
    )
