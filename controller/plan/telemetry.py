"""Router telemetry: what the router records per revision, and the figures analysis reads from it.

The router keeps, per revision, one bucket per wall-clock second in a ring of ``HORIZON_S`` seconds
and sums the last ``window`` seconds when asked. ``Telemetry.snapshot`` is the wire format of
``GET /-/modship/telemetry``; ``figure`` turns that document into the number a check compares. One
module owns the format on both sides. No I/O and no clock: callers pass ``now`` (unix seconds).

Histograms use lower bin edges with the last bin open-ended, like ``refstats.histogram``.

Mirrored requests are not routed traffic: they count in the canary's ``mirror`` block (errors
included), not in its ``requests``/``errors``; but what their answers say (latency, labels,
confidence, evaluations, step fallbacks) and their inputs count in the canary's aggregates, so a
canary that only receives mirrored traffic can still be analysed. The figures therefore measure a
canary over all the traffic it answered: routed plus mirrored.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, assert_never

from controller.plan.answers import Answer
from controller.registry import refstats
from controller.spec.rollout import BuiltinMetric

HORIZON_S = 1024  # seconds of history per revision; windows are capped at this
LATENCY_EDGES: tuple[float, ...] = (
    0.0,
    0.0001,
    0.0002,
    0.0003,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.004,
    0.005,
    0.006,
    0.007,
    0.008,
    0.009,
    0.01,
    0.012,
    0.014,
    0.016,
    0.018,
    0.02,
    0.025,
    0.03,
    0.035,
    0.04,
    0.05,
    0.06,
    0.07,
    0.08,
    0.09,
    0.1,
    0.125,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    2.5,
    3.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
    60.0,
)
CHAR_EDGES: tuple[int, ...] = refstats.TEXT_LENGTH_EDGES
Block = Mapping[str, Any]  # one revision in a snapshot


class _Second:
    """Everything recorded for one revision during one wall-clock second."""

    __slots__ = (
        "at",
        "chars",
        "compared",
        "conf_count",
        "conf_sum",
        "disagreed",
        "errors",
        "failed",
        "fallbacks",
        "labels",
        "latency",
        "m_errors",
        "m_requests",
        "passed",
        "requests",
        "step_fallbacks",
    )

    def __init__(self, at: int) -> None:
        self.reset(at)

    def reset(self, at: int) -> None:
        self.at = at
        self.requests = self.errors = self.fallbacks = self.step_fallbacks = 0
        self.passed = self.failed = self.conf_count = 0
        self.m_requests = self.m_errors = self.compared = self.disagreed = 0
        self.conf_sum = 0.0
        self.latency = [0] * len(LATENCY_EDGES)
        self.chars = [0] * len(CHAR_EDGES)
        self.labels: dict[str, int] = {}


class Record:
    """One revision's ring of seconds. Methods record one event at ``now``."""

    __slots__ = ("_ring", "revision", "role")

    def __init__(self, revision: str, role: str) -> None:
        self.revision = revision
        self.role = role
        self._ring: list[_Second | None] = [None] * HORIZON_S

    def _at(self, now: float) -> _Second:
        sec = int(now)
        i = sec % HORIZON_S
        b = self._ring[i]
        if b is None:
            b = self._ring[i] = _Second(sec)
        elif b.at != sec:
            b.reset(sec)
        return b

    def add(
        self,
        now: float,
        latency: float | None,
        *,
        error: bool,
        fallback: bool = False,
        mirrored: bool = False,
        lengths: Iterable[int] = (),
        answer: Answer | None = None,
    ) -> None:
        """One request this revision was sent, all it says in one bucket lookup. ``latency`` is None
        when no connection was made; ``fallback``: it failed and was retried on stable; ``lengths``:
        of its input texts; ``answer``: what its answer said (None: no readable 2xx answer)."""
        b = self._at(now)
        if mirrored:
            b.m_requests += 1
            b.m_errors += error
        else:
            b.requests += 1
            b.errors += error
            b.fallbacks += fallback
        if latency is not None:
            b.latency[bisect.bisect_right(LATENCY_EDGES, latency) - 1] += 1
        if lengths:
            chars = b.chars
            for n in lengths:
                chars[bisect.bisect_right(CHAR_EDGES, n) - 1] += 1
        if answer is not None:
            labels = b.labels
            for label in answer.labels:
                labels[label] = labels.get(label, 0) + 1
            if answer.confidences:
                b.conf_sum += sum(answer.confidences)
                b.conf_count += len(answer.confidences)
            b.passed += answer.passed
            b.failed += answer.failed
            b.step_fallbacks += answer.step_fallback

    def request(
        self, now: float, *, latency: float | None, error: bool, fallback: bool = False, mirrored: bool = False
    ) -> None:
        """A request this revision was sent (``add`` without what it carried)."""
        self.add(now, latency, error=error, fallback=fallback, mirrored=mirrored)

    def compared(self, now: float, *, disagreed: bool) -> None:
        b = self._at(now)
        b.compared += 1
        b.disagreed += disagreed

    def last_seen(self) -> int:
        return max((b.at for b in self._ring if b is not None), default=0)

    def block(self, now: float, window: int) -> dict[str, Any]:
        """The sums over the seconds in (now - window, now]."""
        hi = int(now)
        lo = hi - window
        seconds = [b for b in self._ring if b is not None and lo < b.at <= hi]
        labels: dict[str, int] = {}
        for b in seconds:
            for k, v in b.labels.items():
                labels[k] = labels.get(k, 0) + v

        def total(attr: str) -> int:
            return sum(getattr(b, attr) for b in seconds)

        def hist(attr: str, edges: Sequence[float]) -> dict[str, Any]:
            counts = [sum(c) for c in zip(*(getattr(b, attr) for b in seconds), strict=True)]
            return {"edges": list(edges), "counts": counts or [0] * len(edges)}

        return {
            "role": self.role,
            "requests": total("requests"),
            "errors": total("errors"),
            "fallbacks": total("fallbacks"),
            "latency": hist("latency", LATENCY_EDGES),
            "labels": dict(sorted(labels.items())),
            "confidence": {"sum": sum(b.conf_sum for b in seconds), "count": total("conf_count")},
            "evaluations": {"pass": total("passed"), "fail": total("failed")},
            "stepFallbacks": total("step_fallbacks"),
            "inputChars": hist("chars", CHAR_EDGES),
            "mirror": {
                "requests": total("m_requests"),
                "errors": total("m_errors"),
                "compared": total("compared"),
                "disagreed": total("disagreed"),
            },
        }


class Telemetry:
    """The records of every revision a router has served."""

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}

    def record(self, revision: str, role: str) -> Record:
        """The revision's record (created on first use); its role follows the latest config."""
        rec = self.records.get(revision)
        if rec is None:
            rec = self.records[revision] = Record(revision, role)
        rec.role = role
        return rec

    def forget_before(self, second: int, *, keep: Iterable[str]) -> None:
        """Drop records of revisions not in ``keep`` with nothing recorded since ``second``."""
        kept = set(keep)
        for name in [n for n, r in self.records.items() if n not in kept and r.last_seen() < second]:
            del self.records[name]

    def snapshot(self, *, now: float, window: float, generation: int) -> dict[str, Any]:
        w = max(1, min(HORIZON_S, round(window)))
        return {
            "generation": generation,
            "now": now,
            "window": w,
            "revisions": {name: rec.block(now, w) for name, rec in self.records.items()},
        }


# -- figures: a snapshot -> the number a check compares --------------------------------------------


@dataclass(frozen=True, slots=True)
class Figure:
    """``value`` for the canary, ``stable`` the same figure for stable (None when there is no data
    or the figure means nothing for stable), ``samples`` the canary requests behind ``value``."""

    value: float | None
    stable: float | None
    samples: int


def seen(b: Block) -> int:
    """Requests the revision answered or failed: routed plus mirrored."""
    return int(b["requests"]) + int(b["mirror"]["requests"])


def ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def percentile(hist: Block, q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram, interpolating linearly inside the bin it falls in;
    in the open-ended last bin, that bin's lower edge. None for an empty histogram."""
    edges, counts = hist["edges"], hist["counts"]
    n = sum(counts)
    if n <= 0:
        return None
    rank = q * n
    cum = 0
    for i, c in enumerate(counts):
        if c and cum + c >= rank:
            if i + 1 >= len(edges):
                return float(edges[i])
            lo, hi = edges[i], edges[i + 1]
            return float(lo + (hi - lo) * max(0.0, rank - cum) / c)
        cum += c
    return float(edges[-1])  # pragma: no cover - unreachable when counts sum to n


def _label_vectors(p: Mapping[str, int], q: Mapping[str, int]) -> tuple[list[int], list[int]] | None:
    if sum(p.values()) <= 0 or sum(q.values()) <= 0:
        return None
    keys = sorted(set(p) | set(q))
    return [p.get(k, 0) for k in keys], [q.get(k, 0) for k in keys]


def _drift(reference: Mapping[str, Any] | None, b: Block) -> float | None:
    if not reference or "text" not in reference:
        return None
    chars = reference["text"]["chars"]
    if list(chars["edges"]) != list(CHAR_EDGES):
        raise ValueError(f"reference input statistics use edges {chars['edges']}, not {list(CHAR_EDGES)}")
    counts = b["inputChars"]["counts"]
    return refstats.psi(chars["hist"], counts) if sum(counts) > 0 else None


def empty_block(role: str = "canary") -> dict[str, Any]:
    """A revision with nothing recorded (absent from a snapshot)."""
    return Record("", role).block(0.0, 1)


def revision_figure(
    b: Block, metric: BuiltinMetric, *, window: float, reference: Mapping[str, Any] | None = None
) -> float | None:
    """``metric`` for one revision's block; None without data, and for the metrics that compare
    two revisions (prediction distances, disagreement)."""
    match metric:
        case BuiltinMetric.ERROR_RATE:
            return ratio(b["errors"] + b["mirror"]["errors"], seen(b))
        case BuiltinMetric.LATENCY_P50:
            return percentile(b["latency"], 0.5)
        case BuiltinMetric.LATENCY_P99:
            return percentile(b["latency"], 0.99)
        case BuiltinMetric.FALLBACK_RATE:
            return ratio(b["stepFallbacks"], seen(b))
        case BuiltinMetric.REQUEST_RATE:
            return seen(b) / window
        case BuiltinMetric.MEAN_CONFIDENCE:
            return ratio(b["confidence"]["sum"], b["confidence"]["count"])
        case BuiltinMetric.EVALUATOR_PASS_RATE:
            return ratio(b["evaluations"]["pass"], b["evaluations"]["pass"] + b["evaluations"]["fail"])
        case BuiltinMetric.INPUT_DRIFT:
            return _drift(reference, b)
        case BuiltinMetric.PREDICTION_JSD | BuiltinMetric.PREDICTION_PSI | BuiltinMetric.DISAGREEMENT:
            return None
        case _:
            assert_never(metric)


def figure(
    snapshot: Block, metric: BuiltinMetric, *, canary: str, stable: str, reference: Mapping[str, Any] | None = None
) -> Figure:
    """Compute ``metric`` for revision ``canary`` against revision ``stable`` from a telemetry
    snapshot. Raises ValueError when ``reference`` statistics cannot be compared (other edges)."""
    revs = snapshot.get("revisions", {})
    c, s = revs.get(canary) or empty_block(), revs.get(stable) or empty_block("stable")
    match metric:
        case BuiltinMetric.PREDICTION_JSD | BuiltinMetric.PREDICTION_PSI:
            vectors = _label_vectors(c["labels"], s["labels"])
            if vectors is None:
                return Figure(None, None, seen(c))
            stable_counts, canary_counts = vectors[1], vectors[0]
            if metric is BuiltinMetric.PREDICTION_JSD:
                return Figure(refstats.js_distance(canary_counts, stable_counts), None, seen(c))
            return Figure(refstats.psi(stable_counts, canary_counts), None, seen(c))
        case BuiltinMetric.DISAGREEMENT:
            m = c["mirror"]
            return Figure(ratio(m["disagreed"], m["compared"]), None, int(m["compared"]))
        case _:
            w = float(snapshot["window"])
            value = revision_figure(c, metric, window=w, reference=reference)
            return Figure(value, revision_figure(s, metric, window=w, reference=reference), seen(c))
