"""The response cache of a composed service, through its real HTTP handler (Starlette, in-process)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from starlette.testclient import TestClient

from controller.pipeline import cache as step_cache
from controller.pipeline import http
from controller.pipeline.engine import Pipeline
from controller.pipeline.response_cache import ResponseCache
from controller.pipeline.serving import App
from controller.spec.system import ResponseCache as CacheSpec
from tests.unit.test_engine import Recorder, build, failing, steps

_REVISIONS = itertools.count()


def serve(pipe: Pipeline, **spec: Any) -> TestClient:
    # a fresh revision label per test: the Prometheus counters are process-wide
    lock = pipe.lock.model_copy(update={"revision": f"r{next(_REVISIONS)}"})
    cache = ResponseCache.of(CacheSpec.model_validate(spec), lock.name, lock.revision)
    http.bind(App(lock=lock, pipeline=pipe, started=time.time(), response_cache=cache))
    return TestClient(http.app())


@pytest.fixture(autouse=True)
def unbind() -> Iterator[None]:
    yield
    http.bind(None)  # type: ignore[arg-type]


def counted(client: TestClient, what: str) -> float:
    app = http._APP
    assert app is not None
    labels = {"system": app.lock.name, "revision": app.lock.revision}
    return REGISTRY.get_sample_value(f"modship_response_cache_{what}_total", labels) or 0.0


def ran(rec: Recorder) -> int:
    return len([e for e in rec.of("step") if e[1] == "encoder"])


def test_a_repeated_request_is_answered_from_the_cache_without_running_a_step() -> None:
    pipe, rec = build(steps(), {})
    client = serve(pipe)
    first = client.post("/predict", json={"text": "hello world"})
    second = client.post("/predict", json={"text": "hello world"})
    assert first.status_code == second.status_code == 200
    assert first.headers["x-modship-cache"] == "miss" and second.headers["x-modship-cache"] == "hit"
    assert second.headers["x-modship-revision"] == http._APP.lock.revision  # type: ignore[union-attr]
    assert ran(rec) == 1
    a, b = first.json(), second.json()
    assert a["prediction"] == b["prediction"] and a["outputs"] == b["outputs"]
    assert "responseCache" not in a["meta"] and b["meta"]["responseCache"] is True
    assert b["meta"]["cached"] == ["encoder", "evaluator", "guard", "head"]
    assert [e[1] for e in rec.of("request")] == ["ok", "ok"]  # the hit is counted as a request
    assert (counted(client, "hits"), counted(client, "misses")) == (1, 1)


def test_the_key_is_the_canonical_inputs_so_key_order_does_not_matter() -> None:
    pipe, rec = build(steps(), {})
    client = serve(pipe)
    client.post("/predict", content=b'{"inputs": {"text": ["a b c", "d e f"]}}')
    hit = client.post("/predict", content=b'{"text": ["a b c", "d e f"]}')
    other = client.post("/predict", json={"text": ["d e f", "a b c"]})
    assert hit.headers["x-modship-cache"] == "hit" and other.headers["x-modship-cache"] == "miss"
    assert ran(rec) == 2


def test_the_key_includes_the_evaluated_flags() -> None:
    flags = [{"name": "evaluation", "enabled": True, "percent": 100}]
    pipe, _ = build(steps(evaluator={"flag": "evaluation"}), {}, flags=flags)
    client = serve(pipe)
    on = client.post("/predict", json={"text": "hello world"})
    off = client.post("/predict", json={"text": "hello world"}, headers={"x-modship-flag-evaluation": "off"})
    again = client.post("/predict", json={"text": "hello world"}, headers={"x-modship-flag-evaluation": "off"})
    assert off.headers["x-modship-cache"] == "miss" and again.headers["x-modship-cache"] == "hit"
    assert on.json()["meta"]["flags"] == {"evaluation": True}
    assert again.json()["meta"]["flags"] == {"evaluation": False}
    assert "evaluation" not in again.json() and "evaluation" in on.json()


def test_answers_with_a_fallback_are_not_cached() -> None:
    pipe, rec = build(steps(head={"fallback": {"module": "head@2"}}), {"head@1": failing})
    client = serve(pipe)
    for _ in range(2):
        r = client.post("/predict", json={"text": "hello world"})
        assert r.status_code == 200 and r.headers["x-modship-cache"] == "miss"
        assert r.headers["x-modship-fallback"] == "head:error"
    assert ran(rec) == 2 and counted(client, "hits") == 0


@pytest.mark.parametrize(("body", "status"), [({"text": 5}, 400), ({"text": "hello world"}, 500)])
def test_errors_are_not_cached(body: dict[str, Any], status: int) -> None:
    pipe, _ = build(steps(), {"head@1": failing})  # no fallback: a step failure is a 500
    client = serve(pipe)
    for _ in range(2):
        r = client.post("/predict", json=body)
        assert r.status_code == status and "x-modship-cache" not in r.headers
    assert len(http._APP.response_cache or []) == 0  # type: ignore[union-attr]
    assert counted(client, "hits") == 0 and counted(client, "misses") == 2


def test_entries_expire_after_the_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(step_cache.time, "monotonic", lambda: now[0])
    pipe, rec = build(steps(), {})
    client = serve(pipe, ttlSeconds=5)
    client.post("/predict", json={"text": "hello world"})
    now[0] += 4
    assert client.post("/predict", json={"text": "hello world"}).headers["x-modship-cache"] == "hit"
    now[0] += 2
    assert client.post("/predict", json={"text": "hello world"}).headers["x-modship-cache"] == "miss"
    assert ran(rec) == 2


def test_max_entries_bounds_the_cache() -> None:
    pipe, _ = build(steps(), {})
    client = serve(pipe, maxEntries=2)
    for text in ("one text", "two text", "three text"):
        client.post("/predict", json={"text": text})
    assert len(http._APP.response_cache or []) == 2  # type: ignore[union-attr]
    assert client.post("/predict", json={"text": "one text"}).headers["x-modship-cache"] == "miss"


def test_without_a_cache_spec_there_is_no_cache_header() -> None:
    pipe, rec = build(steps(), {})
    client = serve(pipe, enabled=False)
    for _ in range(2):
        assert "x-modship-cache" not in client.post("/predict", json={"text": "hello world"}).headers
    assert ran(rec) == 2


def test_noop_parses_the_body_and_answers_a_small_json() -> None:
    pipe, rec = build(steps(), {})
    client = serve(pipe)
    assert client.post("/noop", json={"text": "hello world"}).json() == {"ok": True}
    bad = client.post("/noop", content=b"{not json")
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
    assert rec.events == []
