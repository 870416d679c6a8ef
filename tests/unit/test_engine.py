"""The pipeline engine on small in-process kernels: fallbacks, cache, flags, guards, telemetry."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from controller.compose import revision, validate
from controller.pipeline import kernels
from controller.pipeline.engine import BadRequest, Pipeline, StepFailed
from controller.spec import system as system_spec
from tests.support import modules

VERSIONS = modules.versions()
LABELS = modules.LABELS


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    @contextlib.contextmanager
    def span(self, name: str, attributes: dict[str, Any]) -> Iterator[None]:
        self.events.append(("span", name))
        yield

    def step(self, step: str, module: str, seconds: float, *, error: str | None) -> None:
        self.events.append(("step", step, module, error))

    def fallback(self, step: str, module: str, reason: str) -> None:
        self.events.append(("fallback", step, module, reason))

    def cache(self, step: str, module: str, *, hit: bool) -> None:
        self.events.append(("cache", step, hit))

    def prediction(self, step: str, module: str, label: str, confidence: float) -> None:
        self.events.append(("prediction", step, module, label))

    def evaluation(self, step: str, module: str, *, passed: bool) -> None:
        self.events.append(("evaluation", passed))

    def request(self, seconds: float, outcome: str, input_chars: list[int]) -> None:
        self.events.append(("request", outcome, tuple(input_chars)))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind]


def encoder(batch: Any) -> dict[str, Any]:
    return {"embedding": np.asarray([[len(t), 1, 0, 0] for t in batch["text"]], dtype=np.float32)}


def head(label: int, conf: float = 0.9) -> kernels.Kernel:
    def run(batch: Any) -> dict[str, Any]:
        n = len(batch["embedding"])
        p = np.full((n, 5), (1 - conf) / 4, dtype=np.float32)
        p[:, label] = conf
        return {"probs": p}

    return run


def failing(batch: Any) -> dict[str, Any]:
    raise RuntimeError("boom")


def nan_head(batch: Any) -> dict[str, Any]:
    return {"probs": np.full((len(batch["embedding"]), 5), np.nan, dtype=np.float32)}


def slow(batch: Any) -> dict[str, Any]:
    threading.Event().wait(0.5)  # a module that takes too long
    return head(0)(batch)


def evaluator(batch: Any) -> dict[str, Any]:
    p = np.asarray(batch["probs"])
    return {"score": p.max(axis=1), "passed": p.max(axis=1) > 0.5}


def guard(batch: Any) -> dict[str, Any]:
    for t in batch["text"]:
        if "forbidden" in t:
            raise kernels.GuardRejected("forbidden word")
    return {"text": batch["text"]}


def build(steps: list[dict[str, Any]], loaded: dict[str, Any], **spec: Any) -> tuple[Pipeline, Recorder]:
    system = system_spec.from_document(modules.system_doc(steps, output="head", **spec))
    report = validate.check(system, lambda r: VERSIONS[r], today=dt.date(2026, 1, 1))
    assert report.ok, report.violations
    lock = revision.pin(system, report.resolved)
    rec = Recorder()
    base = {"guard@1": guard, "enc@1": encoder, "head@1": head(3), "head@2": head(1), "conf@1": evaluator}
    return Pipeline(lock, {**base, **loaded}, telemetry=rec), rec


def steps(**changes: dict[str, Any]) -> list[dict[str, Any]]:
    out = copy.deepcopy(modules.STANDARD_STEPS)
    for s in out:
        s.update(changes.get(s["name"], {}))
    return out


def test_runs_every_step_in_order_and_reports_the_prediction() -> None:
    pipe, rec = build(steps(), {})
    out = pipe.predict({"text": "hello world"})
    assert out.prediction == [{"label": LABELS[3], "confidence": pytest.approx(0.9, abs=1e-6)}]
    assert out.evaluation == [{"step": "evaluator", "score": pytest.approx(0.9, abs=1e-6), "passed": True}]
    assert [e[1] for e in rec.of("step")] == ["guard", "encoder", "head", "evaluator"]
    assert rec.of("request") == [("request", "ok", (11,))]
    assert len(out.outputs["probs"]) == 1 and out.fallbacks == []


def test_an_error_falls_back_to_the_fallback_module() -> None:
    pipe, rec = build(steps(head={"fallback": {"module": "head@2"}}), {"head@1": failing})
    out = pipe.predict({"text": "x" * 5})
    assert out.prediction[0]["label"] == LABELS[1]  # type: ignore[index]
    assert out.fallbacks == [{"step": "head", "reason": "error", "used": "head@2"}]
    assert ("fallback", "head", "head@1", "error") in rec.events
    assert ("step", "head", "head@1", "exception") in rec.events
    assert ("prediction", "head", "head@2", LABELS[1]) in rec.events


def test_a_timeout_falls_back() -> None:
    pipe, _ = build(steps(head={"fallback": {"module": "head@2", "timeoutMs": 50}}), {"head@1": slow})
    out = pipe.predict({"text": "hello"})
    assert out.fallbacks[0]["reason"] == "timeout"


def test_low_confidence_and_invalid_output_and_default() -> None:
    pipe, _ = build(
        steps(head={"fallback": {"module": "head@2", "when": ["lowConfidence"], "minConfidence": 0.95}}), {}
    )
    assert pipe.predict({"text": "hello"}).fallbacks[0]["reason"] == "lowConfidence"
    pipe, _ = build(steps(head={"fallback": {"default": {"probs": [0.2] * 5}}}), {"head@1": nan_head})
    out = pipe.predict({"text": ["a b c", "d e f"]})
    assert out.fallbacks == [{"step": "head", "reason": "error", "used": "default"}]
    assert out.outputs["probs"] == [[0.2] * 5, [0.2] * 5]


def test_no_fallback_means_a_step_failure() -> None:
    pipe, rec = build(steps(), {"head@1": failing})
    with pytest.raises(StepFailed, match="step head"):
        pipe.predict({"text": "hello"})
    assert rec.of("request")[-1][1] == "error"


def test_repeated_input_hits_the_cache() -> None:
    calls = []

    def counting(batch: Any) -> dict[str, Any]:
        calls.append(1)
        return encoder(batch)

    pipe, rec = build(steps(encoder={"cache": {"maxEntries": 2}}), {"enc@1": counting})
    for _ in range(3):
        out = pipe.predict({"text": "same text"})
    assert len(calls) == 1 and out.steps["encoder"].get("cached")
    assert [e[2] for e in rec.of("cache")] == [False, True, True]
    pipe.predict({"text": "other 1"})
    pipe.predict({"text": "other 2"})
    pipe.predict({"text": "same text"})  # evicted (2 entries)
    assert len(calls) == 4


def test_flags_turn_optional_steps_off_by_header_and_percent() -> None:
    flags = [{"name": "evaluation", "percent": 0}]
    pipe, _ = build(steps(evaluator={"flag": "evaluation"}), {}, flags=flags)
    out = pipe.predict({"text": "hello"})
    assert out.evaluation is None and out.steps["evaluator"]["skipped"]
    out = pipe.predict({"text": "hello"}, headers={"X-Modship-Flag-Evaluation": "on"})
    assert out.evaluation is not None
    pipe, _ = build(steps(evaluator={"flag": "evaluation"}), {}, flags=[{"name": "evaluation", "percent": 50}])
    on = sum(pipe.predict({"text": "hello"}, request_key=str(i)).evaluation is not None for i in range(400))
    assert 140 < on < 260


def test_flags_follow_the_overrides_file(tmp_path: Any) -> None:
    system = system_spec.from_document(
        modules.system_doc(steps(evaluator={"flag": "evaluation"}), output="head", flags=[{"name": "evaluation"}])
    )
    lock = revision.pin(system, validate.check(system, lambda r: VERSIONS[r], today=dt.date(2026, 1, 1)).resolved)
    overrides = tmp_path / "flags.json"
    pipe = Pipeline(
        lock, {"guard@1": guard, "enc@1": encoder, "head@1": head(3), "conf@1": evaluator}, flags_file=overrides
    )
    pipe.flags._recheck = 0
    assert pipe.predict({"text": "hello"}).evaluation is not None
    overrides.write_text('{"evaluation": {"enabled": false}}')
    assert pipe.predict({"text": "hello"}).evaluation is None


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({}, "missing input 'text'"),
        ({"text": 5}, "must be text"),
        ({"text": ""}, "shorter than"),
        ({"text": "x" * 20_000}, "limit is"),
        ({"text": []}, "empty"),
        ({"text": ["a b"] * 100}, "the limit is 64"),
        ({"text": "ok text", "image": "x"}, "unknown input 'image'"),
        ({"text": "a forbidden word"}, "forbidden word"),
    ],
)
def test_bad_requests_are_client_errors(payload: dict[str, Any], needle: str) -> None:
    pipe, rec = build(steps(), {})
    with pytest.raises(BadRequest, match=needle):
        pipe.predict(payload)
    assert rec.of("request")[-1][1] == "client_error"


def test_input_guard_strips_control_characters_and_denies_patterns() -> None:
    pipe, rec = build(steps(), {}, guards={"input": {"denyPatterns": ["(?i)drop table"]}})
    pipe.predict({"text": "he\x00llo\x07"})
    assert rec.of("request")[-1][2] == (5,)
    with pytest.raises(BadRequest, match="denied pattern"):
        pipe.predict({"text": "please DROP TABLE users"})


def test_optional_steps_are_shed_past_the_latency_budget() -> None:
    def slow_head(batch: Any) -> dict[str, Any]:
        threading.Event().wait(0.05)  # a slow module: the budget runs out during it
        return head(3)(batch)

    flags = [{"name": "evaluation"}]
    pipe, rec = build(steps(evaluator={"flag": "evaluation"}), {"head@1": slow_head}, flags=flags, latencyBudgetMs=10)
    out = pipe.predict({"text": "hello"})
    assert out.over_budget and out.evaluation is None and out.steps["evaluator"]["skipped"]
    assert out.prediction is not None  # the answer itself is never shed
    assert ("fallback", "evaluator", "conf@1", "latencyBudget") in rec.events
    pipe, _ = build(steps(evaluator={"flag": "evaluation"}), {}, flags=flags, latencyBudgetMs=1000)
    assert pipe.predict({"text": "hello"}).evaluation is not None
