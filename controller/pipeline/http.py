"""The HTTP surface of a composed service: ``POST /predict`` as a Starlette app.

Request: ``{"text": "..."}`` or ``{"text": [...]}`` (or ``{"inputs": {...}}`` for other inputs).
Response: outputs, prediction, evaluation and ``meta`` (system, revision, modules used, fallbacks,
cache hits, flags, latency); the headers ``x-modship-revision`` and ``x-modship-fallback``.
Errors: 400 for a bad request (with the reason), 500 when a step fails without a fallback.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from controller.pipeline.engine import BadRequest, StepFailed
from controller.pipeline.serving import App

log = logging.getLogger("modship.service")
_APP: App | None = None
MAX_BODY = 4 << 20


def bind(app: App) -> None:
    global _APP
    _APP = app


def _error(status: int, message: str, revision: str | None) -> JSONResponse:
    return JSONResponse({"error": message, "revision": revision}, status_code=status)


async def predict(request: Request) -> Response:
    app = _APP
    if app is None:
        return _error(503, "the system is still loading", None)
    revision = app.lock.revision
    body = await request.body()
    if len(body) > MAX_BODY:
        return _error(413, f"request body over {MAX_BODY} bytes", revision)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        reason = "request body is not UTF-8" if "utf-8" in str(exc).lower() else f"request body is not JSON: {exc}"
        return _error(400, reason, revision)
    if not isinstance(payload, dict):
        return _error(400, "request body must be a JSON object", revision)
    inputs: dict[str, Any] = dict(payload.get("inputs") or {}) if isinstance(payload.get("inputs"), dict) else {}
    for k, v in payload.items():
        if k != "inputs":
            inputs[k] = v
    try:
        result = await anyio.to_thread.run_sync(app.predict, inputs, dict(request.headers))
    except BadRequest as exc:
        return _error(400, str(exc), revision)
    except StepFailed as exc:
        log.error("predict failed: %s", exc)
        return _error(500, str(exc), revision)
    except Exception as exc:  # a bug: log it with its traceback, answer in our format
        log.exception("predict crashed")
        return _error(500, f"internal error: {type(exc).__name__}", revision)
    headers = {"x-modship-revision": revision}
    fallbacks = result["meta"]["fallbacks"]
    if fallbacks:
        headers["x-modship-fallback"] = ",".join(f"{f['step']}:{f['reason']}" for f in fallbacks)
    return Response(orjson.dumps(result), media_type="application/json", headers=headers)


def app() -> Starlette:
    return Starlette(routes=[Route("/predict", predict, methods=["POST"])])
