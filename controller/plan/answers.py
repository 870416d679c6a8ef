"""What the router reads of the traffic it relays, for telemetry: a composed service's answer
(labels, confidences, evaluations, step fallbacks) and the lengths of a request's texts. Parsed
after the client has its answer, in the recorder's flush; ``telemetry`` aggregates the results.
Pure: bytes in, tuples out.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson


class Answer(NamedTuple):
    """What one response of a composed service says, as far as analysis cares (a tuple: the
    router builds one per answer it relays)."""

    labels: tuple[str, ...]
    confidences: tuple[float, ...]
    passed: int
    failed: int
    step_fallback: bool


def _loads(body: bytes) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return doc if type(doc) is dict else None


def _one(p: object) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The label and confidence of one prediction (each () when absent or of another type)."""
    if type(p) is not dict:
        return (), ()
    label, c = p.get("label"), p.get("confidence")
    return ((label,) if type(label) is str else ()), ((float(c),) if type(c) is float or type(c) is int else ())


def answer(body: bytes) -> Answer | None:
    """Parse a ``/predict`` response body; None when it is not a JSON object. The router calls this
    for every answer it relays: one prediction (the common case) takes no loop, and types are
    compared exactly (what orjson returns), so ``true`` is no number."""
    doc = _loads(body)
    if doc is None:
        return None
    preds = doc.get("prediction")
    if type(preds) is not list:
        labels, confs = _one(preds)
    elif len(preds) == 1:
        labels, confs = _one(preds[0])
    else:
        each = [_one(p) for p in preds]
        labels, confs = tuple(x for ls, _ in each for x in ls), tuple(x for _, cs in each for x in cs)
    passed = failed = 0
    evals = doc.get("evaluation")
    if type(evals) is list:
        for e in evals:
            if type(e) is dict and "passed" in e:
                if e["passed"] is True:
                    passed += 1
                else:
                    failed += 1
    meta = doc.get("meta")
    return Answer(labels, confs, passed, failed, type(meta) is dict and bool(meta.get("fallbacks")))


def input_lengths(body: bytes) -> tuple[int, ...]:
    """Character lengths of the request's ``text`` (a string or a list of strings; also accepted
    under ``inputs``); empty when there is none."""
    doc = _loads(body)
    if doc is None:
        return ()
    text = doc.get("text")
    if text is None and isinstance(doc.get("inputs"), dict):
        text = doc["inputs"].get("text")
    if isinstance(text, str):
        return (len(text),)
    if isinstance(text, list):
        return tuple(len(t) for t in text if isinstance(t, str))
    return ()
