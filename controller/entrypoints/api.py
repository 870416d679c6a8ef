"""The local controller's HTTP API: every CLI verb goes through it (on Kubernetes the same verbs
patch the Rollout resource instead).

    GET    /v1/systems                      systems and their phase
    POST   /v1/systems                      deploy {"system": doc, "rollout": doc?, "port": int}
    GET    /v1/systems/{name}               status (the ``status -o json`` document)
    DELETE /v1/systems/{name}               stop its processes and forget it
    POST   /v1/systems/{name}/promote       {"modules": [...], "system": doc?, "full": bool, "force": bool}
    POST   /v1/systems/{name}/pause|resume|abort|retry|rollback
    POST   /v1/systems/{name}/undo          {"toRevision": n?}
    POST   /v1/systems/{name}/toggle        {"flag": str, "enabled": bool, "percent": float}
    GET    /v1/systems/{name}/history       revisions and outcomes
    GET    /v1/systems/{name}/events        the timeline
    GET    /metrics                         the local runtime's processes, memory and crashes

Errors are ``{"error": message, "exitCode": n}`` with 400 (bad input), 404, 409, 503 or 500.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from controller.apply import promotion
from controller.apply.local_controller import LocalController
from controller.entrypoints import runtime_metrics, views
from controller.errors import Conflict, ModshipError, NotFound, SpecError, Unavailable
from controller.spec import system as system_spec

log = logging.getLogger("modship.api")
_STATUS = {SpecError: 400, NotFound: 404, Conflict: 409, Unavailable: 503}


def _error(exc: ModshipError) -> JSONResponse:
    code = next((v for k, v in _STATUS.items() if isinstance(exc, k)), 500 if type(exc) is ModshipError else 400)
    if type(exc) is ModshipError:
        code = 409
    return JSONResponse({"error": str(exc), "exitCode": exc.exit_code}, status_code=code)


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise SpecError("request body is not JSON") from None
    if not isinstance(body, dict):
        raise SpecError("request body must be a JSON object")
    return body


def app(c: LocalController) -> Starlette:
    import anyio

    def handler(fn: Any) -> Any:
        async def endpoint(request: Request) -> JSONResponse:
            try:
                body = await _json(request) if request.method in ("POST", "PUT") else {}
                name = request.path_params.get("name", "")
                result = await anyio.to_thread.run_sync(lambda: fn(name, body, dict(request.query_params)))
                return JSONResponse(result)
            except ModshipError as exc:
                return _error(exc)
            except Exception as exc:  # a bug: keep the traceback in the controller's log
                log.exception("%s %s failed", request.method, request.url.path)
                return JSONResponse(
                    {"error": f"internal error: {type(exc).__name__}: {exc}", "exitCode": 70}, status_code=500
                )

        return endpoint

    def systems(name: str, body: dict[str, Any], q: dict[str, str]) -> Any:
        return [views.summary(c, n) for n in c.store.systems()]

    def deploy(name: str, body: dict[str, Any], q: dict[str, str]) -> Any:
        sys_doc = body.get("system")
        if not isinstance(sys_doc, dict):
            raise SpecError("give the System document", field="system")
        system = system_spec.from_document(sys_doc, source="system")
        port = body.get("port")
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise SpecError(f"port must be 1-65535, got {port!r}", field="port")
        name = system.metadata.name
        if name in c.store.systems():
            raise Conflict(f"system {name!r} is already deployed (promote a new revision instead)")
        prepared = promotion.deploy(
            c.registry,
            c.store,
            system,
            body.get("rollout"),
            cache=c.cfg.module_cache,
            bentoml_home=c.cfg.bentoml_home,
            port=port,
        )
        c.manage(name)
        return {"system": name, "revision": prepared.lock.revision, "router": f"http://127.0.0.1:{port}"}

    def status(name: str, body: dict[str, Any], q: dict[str, str]) -> Any:
        return views.status(c, name)

    def delete(name: str, body: dict[str, Any], q: dict[str, str]) -> Any:
        c.store.rollout(name)
        c.forget(name, stop=True)
        return {"system": name, "stopped": True}

    def promote(name: str, body: dict[str, Any], q: dict[str, str]) -> Any:
        modules = body.get("modules") or []
        if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
            raise SpecError("modules must be a list of NAME@VERSION", field="modules")
        doc = body.get("system")
        spec = system_spec.from_document(doc, source="system") if isinstance(doc, dict) else None
        if body.get("full") and not modules and spec is None:
            c.store.command(name, promote_full=time.time())
            c.wake(name)
            return {"system": name, "promoteFull": True}
        prepared, notes = promotion.promote(
            c.registry,
            c.store,
            name,
            modules=modules,
            spec=spec,
            cache=c.cfg.module_cache,
            bentoml_home=c.cfg.bentoml_home,
            force=bool(body.get("force")),
        )
        if body.get("full"):
            c.store.command(name, promote_full=time.time() + 0.001)
        c.wake(name)
        return {
            "system": name,
            "revision": prepared.lock.revision,
            "number": prepared.record.number,
            "changes": notes,
            "overrides": prepared.overrides,
        }

    def command(kind: str) -> Any:
        def run(name: str, body: dict[str, Any], q: dict[str, str]) -> Any:
            c.store.rollout(name)
            now = time.time()
            match kind:
                case "pause":
                    c.store.command(name, paused=True)
                case "resume":
                    c.store.command(name, paused=False, resume=now)
                case "abort":
                    c.store.command(name, abort=now)
                case "retry":
                    c.store.command(name, retry=now)
                case "rollback":
                    msg = promotion.rollback(c.store, name)
                    c.wake(name)
                    return {"system": name, "message": msg}
            c.wake(name)
            return {"system": name, "command": kind}

        return run

    def undo(name: str, body: dict[str, Any], q: dict[str, str]) -> Any:
        to = body.get("toRevision")
        if to is not None and not isinstance(to, int):
            raise SpecError("toRevision must be a revision number", field="toRevision")
        rec = promotion.undo(c.store, name, to=to)
        c.wake(name)
        return {"system": name, "revision": rec.revision, "number": rec.number}

    def toggle(name: str, body: dict[str, Any], q: dict[str, str]) -> Any:
        flag, enabled, percent = body.get("flag"), body.get("enabled"), body.get("percent", 100.0)
        lock = c.store.lock(name, c.store.status(name).stable or "")
        known = {f.name for f in lock.system.spec.flags}
        if flag not in known:
            raise SpecError(f"system {name} has no flag {flag!r} (flags: {sorted(known)})", field="flag")
        if not isinstance(enabled, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
            raise SpecError("enabled must be true/false and percent 0-100", field="percent")
        c.store.toggle(name, str(flag), enabled=enabled, percent=float(percent))
        c.manage(name).runtime.refresh_toggles()
        return {"system": name, "flag": flag, "enabled": enabled, "percent": percent}

    def history(name: str, body: dict[str, Any], q: dict[str, str]) -> Any:
        return views.history(c, name)

    def events(name: str, body: dict[str, Any], q: dict[str, str]) -> Any:
        return c.store.events(name, limit=int(q.get("limit", "200")))

    routes = [
        Route("/v1/systems", handler(systems), methods=["GET"]),
        Route("/v1/systems", handler(deploy), methods=["POST"]),
        Route("/v1/systems/{name}", handler(status), methods=["GET"]),
        Route("/v1/systems/{name}", handler(delete), methods=["DELETE"]),
        Route("/v1/systems/{name}/promote", handler(promote), methods=["POST"]),
        Route("/v1/systems/{name}/undo", handler(undo), methods=["POST"]),
        Route("/v1/systems/{name}/toggle", handler(toggle), methods=["POST"]),
        Route("/v1/systems/{name}/history", handler(history), methods=["GET"]),
        Route("/v1/systems/{name}/events", handler(events), methods=["GET"]),
        Route("/v1/healthz", handler(lambda n, b, q: {"ok": True}), methods=["GET"]),
    ]

    async def metrics(request: Request) -> Response:
        body = await anyio.to_thread.run_sync(lambda: runtime_metrics.render(c))
        return Response(body, media_type=runtime_metrics.CONTENT_TYPE)

    routes.append(Route("/metrics", metrics, methods=["GET"]))
    for verb in ("pause", "resume", "abort", "retry", "rollback"):
        routes.append(Route(f"/v1/systems/{{name}}/{verb}", handler(command(verb)), methods=["POST"]))
    return Starlette(routes=routes)
