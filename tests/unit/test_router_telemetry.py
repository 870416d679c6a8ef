"""Router telemetry: recording per second, windows, and the figures the built-in provider computes."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from controller.adapters.router import split
from controller.errors import SpecError
from controller.plan import answers, telemetry
from controller.plan.answers import Answer
from controller.plan.telemetry import Figure
from controller.registry import refstats
from controller.spec import parse
from controller.spec.rollout import BuiltinMetric as M
from controller.spec.routing import RouterConfig

NOW = 1_700_000_000.0


def block(role: str = "canary", **changes: Any) -> dict[str, Any]:
    """An empty revision block with some fields replaced (nested dicts are merged)."""
    b = telemetry.empty_block(role)
    for k, v in changes.items():
        b[k] = {**b[k], **v} if isinstance(v, dict) and k != "labels" else v
    return b


def snap(
    canary: dict[str, Any] | None = None, stable: dict[str, Any] | None = None, window: int = 60
) -> dict[str, Any]:
    revs = {k: v for k, v in (("c", canary), ("s", stable)) if v is not None}
    return {"generation": 1, "now": NOW, "window": window, "revisions": revs}


def fig(metric: M, s: dict[str, Any], reference: dict[str, Any] | None = None) -> Figure:
    return telemetry.figure(s, metric, canary="c", stable="s", reference=reference)


def latency(*pairs: tuple[int, int]) -> dict[str, Any]:
    counts = [0] * len(telemetry.LATENCY_EDGES)
    for i, n in pairs:
        counts[i] = n
    return {"edges": list(telemetry.LATENCY_EDGES), "counts": counts}


# -- parsing answers and inputs ---------------------------------------------------------------------


def test_answer_reads_labels_confidence_evaluations_and_step_fallbacks() -> None:
    body = {
        "outputs": {},
        "prediction": [{"label": "sport", "confidence": 0.75}, {"label": "tech", "confidence": 1}],
        "evaluation": [{"step": "evaluator", "score": 0.9, "passed": True}, {"step": "e2", "passed": False}],
        "meta": {
            "revision": "r1",
            "fallbacks": [{"step": "head", "reason": "error", "used": "topic-head@2"}],
        },
    }
    assert answers.answer(json.dumps(body).encode()) == Answer(("sport", "tech"), (0.75, 1.0), 1, 1, True)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"not json", None),
        (b"[1, 2]", None),
        (b"{}", Answer((), (), 0, 0, False)),
        (
            b'{"prediction": {"label": "x", "confidence": true}, "meta": {"fallbacks": []}}',
            Answer(("x",), (), 0, 0, False),
        ),
    ],
)
def test_answer_tolerates_other_shapes(body: bytes, expected: Answer | None) -> None:
    assert answers.answer(body) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"text": "hello"}', (5,)),
        (b'{"text": ["ab", "abc", 3]}', (2, 3)),
        (b'{"inputs": {"text": "abcd"}}', (4,)),
        (b'{"other": 1}', ()),
        (b"garbage", ()),
    ],
)
def test_input_lengths(body: bytes, expected: tuple[int, ...]) -> None:
    assert answers.input_lengths(body) == expected


# -- recording and windows --------------------------------------------------------------------------


def test_records_sum_over_the_window_only() -> None:
    t = telemetry.Telemetry()
    rec = t.record("r2", "canary")
    rec.request(NOW - 100, latency=0.004, error=False)  # outside a 60 s window
    rec.request(NOW - 59, latency=0.004, error=True, fallback=True)  # the oldest second of the window
    rec.add(NOW, 0.02, error=False, lengths=[5, 45, 6000], answer=Answer(("sport",), (0.5,), 1, 0, True))
    # a mirrored request: not routed traffic, but what its answer says counts in the aggregates
    rec.add(NOW, None, error=True, mirrored=True, answer=Answer(("tech", "sport"), (1.0, 0.5), 0, 1, False))
    rec.compared(NOW, disagreed=True)
    rec.compared(NOW, disagreed=False)

    b = t.snapshot(now=NOW, window=60, generation=3)["revisions"]["r2"]
    assert (b["role"], b["requests"], b["errors"], b["fallbacks"]) == ("canary", 2, 1, 1)
    assert b["mirror"] == {"requests": 1, "errors": 1, "compared": 2, "disagreed": 1}
    assert b["labels"] == {"sport": 2, "tech": 1}
    assert b["confidence"] == {"sum": 2.0, "count": 3}
    assert b["evaluations"] == {"pass": 1, "fail": 1}
    assert b["stepFallbacks"] == 1
    assert sum(b["latency"]["counts"]) == 2  # the mirrored request never connected
    assert b["inputChars"]["edges"] == list(refstats.TEXT_LENGTH_EDGES)
    assert b["inputChars"]["counts"] == refstats.histogram([5, 45, 6000], refstats.TEXT_LENGTH_EDGES)
    assert t.snapshot(now=NOW, window=200, generation=3)["revisions"]["r2"]["requests"] == 3


def test_the_ring_forgets_what_is_older_than_its_horizon() -> None:
    rec = telemetry.Telemetry().record("r1", "stable")
    rec.request(NOW, latency=0.01, error=False)
    later = NOW + telemetry.HORIZON_S  # the same slot of the ring
    rec.request(later, latency=0.01, error=False)
    assert rec.block(later, telemetry.HORIZON_S)["requests"] == 1
    assert rec.block(later + 5, 1)["requests"] == 0


def test_snapshot_clamps_the_window_and_keeps_roles_current() -> None:
    t = telemetry.Telemetry()
    t.record("r1", "canary").request(NOW, latency=0.01, error=False)
    t.record("r1", "stable")  # promoted
    s = t.snapshot(now=NOW, window=1e9, generation=1)
    assert s["window"] == telemetry.HORIZON_S
    assert s["revisions"]["r1"]["role"] == "stable"
    assert t.snapshot(now=NOW, window=0, generation=1)["window"] == 1


def test_forget_keeps_configured_and_recent_revisions() -> None:
    t = telemetry.Telemetry()
    t.record("old", "stable").request(NOW - 5000, latency=None, error=False)
    t.record("recent", "canary").request(NOW, latency=None, error=False)
    t.record("configured", "stable")
    t.forget_before(int(NOW) - 900, keep=["configured"])
    assert sorted(t.records) == ["configured", "recent"]


# -- percentiles ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hist", "q", "expected"),
    [
        ({"edges": [0, 1, 2], "counts": [0, 10, 0]}, 0.5, 1.5),
        ({"edges": [0, 1, 2], "counts": [0, 10, 0]}, 0.99, 1.99),
        ({"edges": [0, 1, 2], "counts": [5, 5, 0]}, 0.5, 1.0),
        ({"edges": [0, 1, 2], "counts": [5, 5, 0]}, 0.6, 1.2),
        ({"edges": [0, 1, 2], "counts": [0, 0, 4]}, 0.5, 2.0),  # open-ended last bin: its lower edge
        ({"edges": [0, 1, 2], "counts": [1, 0, 0]}, 0.0, 0.0),
        ({"edges": [0, 1, 2], "counts": [0, 0, 0]}, 0.5, None),
    ],
)
def test_percentile_interpolates_within_the_bin(hist: dict[str, Any], q: float, expected: float | None) -> None:
    got = telemetry.percentile(hist, q)
    assert got == expected if expected is None else got == pytest.approx(expected)


# -- figures ----------------------------------------------------------------------------------------

ERRS = snap(
    block(requests=80, errors=4, mirror={"requests": 20, "errors": 1}),
    block("stable", requests=100, errors=1),
)
EDGE = telemetry.LATENCY_EDGES.index
LAT = snap(
    block(requests=10, latency=latency((EDGE(0.008), 10))),
    block("stable", requests=10, latency=latency((EDGE(0.004), 10))),
)
LABELS = snap(block(requests=10, labels={"a": 5, "b": 5}), block("stable", requests=30, labels={"a": 15, "b": 15}))
DISJOINT = snap(block(requests=4, labels={"a": 4}), block("stable", requests=4, labels={"b": 4}))


@pytest.mark.parametrize(
    ("metric", "s", "expected"),
    [
        (M.ERROR_RATE, ERRS, Figure(0.05, 0.01, 100)),
        (M.LATENCY_P50, LAT, Figure(0.0085, 0.0045, 10)),  # middle of [8, 9) ms and [4, 5) ms
        (
            M.FALLBACK_RATE,
            snap(block(requests=10, stepFallbacks=3), block("stable", requests=10)),
            Figure(0.3, 0.0, 10),
        ),
        (M.REQUEST_RATE, snap(block(requests=30), block("stable", requests=90), window=30), Figure(1.0, 3.0, 30)),
        (
            M.MEAN_CONFIDENCE,
            snap(
                block(requests=2, confidence={"sum": 1.5, "count": 2}),
                block("stable", requests=1, confidence={"sum": 0.9, "count": 1}),
            ),
            Figure(0.75, 0.9, 2),
        ),
        (
            M.EVALUATOR_PASS_RATE,
            snap(block(requests=4, evaluations={"pass": 3, "fail": 1}), block("stable")),
            Figure(0.75, None, 4),
        ),
        (M.PREDICTION_JSD, LABELS, Figure(0.0, None, 10)),
        (M.PREDICTION_JSD, DISJOINT, Figure(1.0, None, 4)),
        (M.PREDICTION_PSI, LABELS, Figure(0.0, None, 10)),
        (
            M.DISAGREEMENT,
            snap(block(mirror={"requests": 50, "compared": 40, "disagreed": 10}), block("stable")),
            Figure(0.25, None, 40),
        ),
    ],
)
def test_figures(metric: M, s: dict[str, Any], expected: Figure) -> None:
    got = fig(metric, s)
    assert got.samples == expected.samples
    for a, b in ((got.value, expected.value), (got.stable, expected.stable)):
        assert (a is None and b is None) or a == pytest.approx(b)


def test_prediction_psi_grows_with_the_shift() -> None:
    small = fig(
        M.PREDICTION_PSI,
        snap(block(requests=100, labels={"a": 55, "b": 45}), block("stable", labels={"a": 50, "b": 50})),
    ).value
    large = fig(
        M.PREDICTION_PSI,
        snap(block(requests=100, labels={"a": 90, "b": 10, "c": 5}), block("stable", labels={"a": 50, "b": 50})),
    ).value
    assert small is not None and large is not None
    assert 0 < small < 0.1
    assert large > 0.25


def test_a_mirror_only_canary_is_measured_on_its_mirrored_traffic() -> None:
    canary = block(mirror={"requests": 40, "errors": 2, "compared": 38, "disagreed": 0}, stepFallbacks=4)
    s = snap(canary, block("stable", requests=40))
    assert fig(M.ERROR_RATE, s) == Figure(0.05, 0.0, 40)
    assert fig(M.FALLBACK_RATE, s).value == pytest.approx(0.1)
    assert fig(M.DISAGREEMENT, s) == Figure(0.0, None, 38)


def test_input_drift_against_reference_statistics() -> None:
    ref = {"text": refstats.text_stats(["x" * n for n in (10, 30, 50, 70, 90) * 20])}
    same = refstats.histogram([10, 30, 50, 70, 90], refstats.TEXT_LENGTH_EDGES)
    longer = refstats.histogram([900, 1500, 2500] * 5, refstats.TEXT_LENGTH_EDGES)
    s = snap(
        block(requests=15, inputChars={"counts": longer}),
        block("stable", requests=5, inputChars={"counts": same}),
    )
    got = fig(M.INPUT_DRIFT, s, reference=ref)
    assert got.stable == pytest.approx(0.0, abs=1e-9)
    assert got.value is not None and got.value > 1.0
    assert got.samples == 15
    assert fig(M.INPUT_DRIFT, s, reference=None) == Figure(None, None, 15)
    bad = {"text": {**ref["text"], "chars": {**ref["text"]["chars"], "edges": [0, 10]}}}
    with pytest.raises(ValueError, match="edges"):
        fig(M.INPUT_DRIFT, s, reference=bad)


@pytest.mark.parametrize("metric", list(M))
def test_empty_windows_have_no_value(metric: M) -> None:
    for s in (snap(), snap(block(), block("stable"))):
        got = fig(metric, s, reference={"text": refstats.text_stats(["abc"])})
        assert got.samples == 0
        if metric is M.REQUEST_RATE:
            assert got == Figure(0.0, 0.0, 0)  # no traffic is a rate, not a missing value
        else:
            assert got.value is None and got.stable is None


# -- routing configuration and sticky buckets -------------------------------------------------------


def test_sticky_buckets_are_stable_and_spread() -> None:
    keys = [f"user-{i}".encode() for i in range(4000)]
    buckets = [split.bucket(k) for k in keys]
    assert buckets == [split.bucket(k) for k in keys]
    assert all(0 <= b < 100 for b in buckets)
    share = sum(b < 20 for b in buckets) / len(buckets)
    assert math.isclose(share, 0.2, abs_tol=0.03)


@pytest.mark.parametrize(
    ("doc", "field", "needle"),
    [
        ({"weight": 10}, "(document)", "weight need(s) a canary"),
        ({"canary": {"revision": "r1", "url": "http://127.0.0.1:2"}}, "(document)", "same revision"),
        ({"stable": {"revision": "r1", "url": "https://x:1"}}, "stable.url", "not an http://host:port URL"),
        ({"stable": {"revision": "r1", "url": "http://x:1/predict"}}, "stable.url", "has a path"),
        ({"weight": 101}, "weight", "less than or equal to 100"),
        ({"sticky": {}}, "sticky", "give header, cookie or both"),
    ],
)
def test_router_config_errors_name_the_field(doc: dict[str, Any], field: str, needle: str) -> None:
    base = {"system": "s", "generation": 1, "stable": {"revision": "r1", "url": "http://127.0.0.1:1"}}
    with pytest.raises(SpecError) as info:
        parse.to_model(RouterConfig, {**base, **doc})
    assert needle in str(info.value)
    assert info.value.field == field


def test_router_config_round_trips_through_its_wire_form() -> None:
    doc = {
        "system": "s",
        "generation": 2,
        "stable": {"revision": "r1", "url": "http://127.0.0.1:1/"},
        "canary": {"revision": "r2", "url": "http://localhost:2"},
        "weight": 20,
        "headerRoute": {"name": "X-Canary", "value": None},
        "sticky": {"header": "X-User-Id"},
    }
    c = RouterConfig.model_validate(doc)
    assert c.stable is not None and (c.stable.url, c.stable.host, c.stable.port) == (
        "http://127.0.0.1:1",
        "127.0.0.1",
        1,
    )
    assert c.header_route is not None and c.header_route.name == "x-canary"
    assert c.sticky is not None and c.sticky.header == "x-user-id"
    assert RouterConfig.model_validate(c.wire()) == c
