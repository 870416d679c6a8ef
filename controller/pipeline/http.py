"""The HTTP surface of a composed service: ``POST /predict`` as a Starlette app.

Request: ``{"text": "..."}`` or ``{"text": [...]}`` (or ``{"inputs": {...}}`` for other inputs).
Response: outputs, prediction, evaluation and ``meta`` (system, revision, modules used, fallbacks,
cache hits, flags, latency); the headers ``x-modship-revision`` and ``x-modship-fallback``.
Errors: 400 for a bad request (with the reason), 500 when a step fails without a fallback.

With a response cache (``spec.cache``) a repeated request is answered here, in the event loop,
before any thread hop: ``meta.responseCache`` is true and the header ``x-modship-cache`` says
``hit`` (``miss`` when the pipeline ran). The request metrics count hits like any other answer.

``POST /noop`` reads and parses a JSON body like ``/predict`` and answers ``{"ok": true}``: the cost
of the HTTP stack alone, the floor a cache hit is measured against (``bench/cache.py``).
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
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
    started = time.perf_counter()
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
    headers = dict(request.headers)  # Starlette's names are lower case already
    request_key = headers.get("x-request-id") or uuid.uuid4().hex
    cache, key = app.response_cache, None
    if cache is not None:
        key = cache.key(inputs, app.pipeline.flags.evaluate(headers, request_key))
        hit = cache.get(key) if key is not None else None
        if hit is not None:
            return _hit(app, hit, inputs, started)
    try:
        result = await anyio.to_thread.run_sync(
            functools.partial(app.predict, inputs, headers, request_key=request_key)
        )
    except BadRequest as exc:
        return _error(400, str(exc), revision)
    except StepFailed as exc:
        log.error("predict failed: %s", exc)
        return _error(500, str(exc), revision)
    except Exception as exc:  # a bug: log it with its traceback, answer in our format
        log.exception("predict crashed")
        return _error(500, f"internal error: {type(exc).__name__}", revision)
    out = {"x-modship-revision": revision}
    fallbacks = result["meta"]["fallbacks"]
    if fallbacks:
        out["x-modship-fallback"] = ",".join(f"{f['step']}:{f['reason']}" for f in fallbacks)
    if cache is not None:
        out["x-modship-cache"] = "miss"
        if key is not None:
            cache.put(key, result)
    return Response(orjson.dumps(result), media_type="application/json", headers=out)


def _hit(app: App, body: dict[str, Any], inputs: dict[str, Any], started: float) -> Response:
    seconds = time.perf_counter() - started
    body["meta"]["latencyMs"] = round(seconds * 1000, 3)
    app.pipeline.telemetry.request(seconds, "ok", _chars(inputs))
    headers = {"x-modship-revision": app.lock.revision, "x-modship-cache": "hit"}
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)


def _chars(inputs: dict[str, Any]) -> list[int]:
    """The lengths of the text inputs (for the input-length histogram, as the guard records them)."""
    out: list[int] = []
    for v in inputs.values():
        if isinstance(v, str):
            out.append(len(v))
        elif isinstance(v, list):
            out.extend(len(x) for x in v if isinstance(x, str))
    return out


async def noop(request: Request) -> Response:
    """The HTTP stack alone: read and parse a JSON body, answer a small JSON object."""
    try:
        orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        return _error(400, f"request body is not JSON: {exc}", None)
    return Response(b'{"ok":true}', media_type="application/json")


def app() -> Starlette:
    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/noop", noop, methods=["POST"])])
