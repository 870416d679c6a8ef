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
    GET    /v1/systems/{name}/history       revisions and outcomes
    GET    /v1/systems/{name}/events        the timeline
    GET    /v1/systems/{name}/modules?revision=N   the modules behind a revision (contracts, lineage...)
    GET    /v1/events/stream                server-sent events: which systems changed (the dashboard)
    GET    /dashboard/                      the web dashboard (static files; see ``dashboard``)
    GET    /metrics                         the local runtime's processes, memory and crashes

Errors are ``{"error": message, "exitCode": n}`` with 400 (bad input), 404, 409 (a conflict: the
rollout's state does not allow the request now), 503 or 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from controller import ports
from controller.apply.local_control import LocalControl
from controller.apply.local_controller import LocalController
from controller.apply.watch import Watch
from controller.entrypoints import dashboard, runtime_metrics
from controller.errors import Conflict, ModshipError, NotFound, SpecError, Unavailable
from controller.spec import control
from controller.spec.control import Command, request

log = logging.getLogger("modship.api")
_STATUS = {SpecError: 400, NotFound: 404, Conflict: 409, Unavailable: 503}

Handler = Callable[[str, dict[str, Any], dict[str, str]], Any]


def _error(exc: ModshipError) -> JSONResponse:
    code = next((v for k, v in _STATUS.items() if isinstance(exc, k)), 409 if type(exc) is ModshipError else 400)
    return JSONResponse({"error": str(exc), "exitCode": exc.exit_code}, status_code=code)


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise SpecError("request body is not JSON") from None
    if not isinstance(body, dict):
        raise SpecError("request body must be a JSON object")
    return body


def _endpoint(fn: Handler) -> Any:
    import anyio

    async def endpoint(req: Request) -> JSONResponse:
        try:
            body = await _json(req) if req.method in ("POST", "PUT") else {}
            name = req.path_params.get("name", "")
            result = await anyio.to_thread.run_sync(lambda: fn(name, body, dict(req.query_params)))
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


def routes(ctl: ports.Control) -> list[Route]:
    """The ``Control`` port's verbs, for any backend (the local controller, or Kubernetes behind
    ``modship dashboard --context``)."""

    def command(cmd: Command) -> Handler:
        return lambda n, b, q: ctl.command(n, cmd)

    table: list[tuple[str, str, Handler]] = [
        ("GET", "/v1/systems", lambda n, b, q: ctl.systems()),
        ("GET", "/v1/systems/{name}", lambda n, b, q: ctl.status(n)),
        ("POST", "/v1/systems/{name}/promote", lambda n, b, q: ctl.promote(n, request(control.PromoteRequest, b))),
        ("POST", "/v1/systems/{name}/undo", lambda n, b, q: ctl.undo(n, request(control.UndoRequest, b))),
        ("POST", "/v1/systems/{name}/toggle", lambda n, b, q: ctl.toggle(n, request(control.ToggleRequest, b))),
        ("GET", "/v1/systems/{name}/history", lambda n, b, q: ctl.history(n)),
        ("GET", "/v1/systems/{name}/events", lambda n, b, q: ctl.events(n, limit=_limit(q))),
        ("GET", "/v1/healthz", lambda n, b, q: {"ok": True}),
    ]
    table += [("POST", f"/v1/systems/{{name}}/{cmd.value}", command(cmd)) for cmd in Command]
    return [Route(path, _endpoint(fn), methods=[method]) for method, path, fn in table]


def local_routes(ctl: LocalControl) -> list[Route]:
    """What only the local runtime has: deploy, delete, and the modules behind a revision."""
    table: list[tuple[str, str, Handler]] = [
        ("POST", "/v1/systems", lambda n, b, q: ctl.deploy(request(control.DeployRequest, b))),
        ("DELETE", "/v1/systems/{name}", lambda n, b, q: ctl.delete(n)),
        ("GET", "/v1/systems/{name}/modules", lambda n, b, q: ctl.modules(n, _number(q, "revision"))),
    ]
    return [Route(path, _endpoint(fn), methods=[method]) for method, path, fn in table]


def _number(q: dict[str, str], key: str) -> int:
    try:
        return int(q[key])
    except (KeyError, ValueError):
        raise SpecError(f"{key} must be a revision number", field=key) from None


def app(c: LocalController) -> Starlette:
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
        ]
    )
