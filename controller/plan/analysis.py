"""Analysis: samples -> measurement verdicts -> check verdicts -> an analysis verdict.

Rules (Argo Rollouts' semantics, made strict so that *inconclusive never promotes*):
- a measurement is Error when the provider failed, Inconclusive without data or below
  ``minSamples`` (or without a stable figure for a relative threshold), else Successful or Failed;
- a check is Failed once failures exceed ``failureLimit``, Inconclusive once inconclusive
  measurements exceed ``inconclusiveLimit``, Error once consecutive errors exceed
  ``consecutiveErrorLimit``, Successful after ``count`` successful measurements, else Running;
- an analysis is the worst of its checks (Failed > Error > Inconclusive > Running > Successful).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from controller.plan.observations import Sample
from controller.plan.status import CheckRun, Measurement, Verdict
from controller.spec.rollout import Check

DEFAULT_STEP_COUNT = 3


def measure(check: Check, sample: Sample, now: float, *, window_full: bool = True) -> Measurement:
    """``window_full`` is False while the analysis is younger than the check's window: too few
    samples then means "not yet" (Running, not counted), not Inconclusive."""

    def m(verdict: Verdict) -> Measurement:
        return Measurement(now, verdict, sample.value, sample.stable, sample.samples, sample.error)

    if sample.error is not None:
        return m(Verdict.ERROR)
    if sample.value is None or sample.samples < check.min_samples:
        return m(Verdict.INCONCLUSIVE if window_full else Verdict.RUNNING)
    x = sample.value
    if check.threshold.relative_to == "stable":
        if sample.stable is None:
            return m(Verdict.INCONCLUSIVE)
        x = sample.value - sample.stable
    lo, hi = check.threshold.min, check.threshold.max
    ok = (lo is None or x >= lo) and (hi is None or x <= hi)
    return m(Verdict.SUCCESSFUL if ok else Verdict.FAILED)


def check_verdict(check: Check, run: CheckRun, *, count: int | None) -> Verdict:
    if run.failures > check.failure_limit:
        return Verdict.FAILED
    if run.inconclusive > check.inconclusive_limit:
        return Verdict.INCONCLUSIVE
    if run.errors_in_row > check.consecutive_error_limit:
        return Verdict.ERROR
    if count is not None and run.successes >= count:
        return Verdict.SUCCESSFUL
    return Verdict.RUNNING


_SEVERITY = {Verdict.FAILED: 4, Verdict.ERROR: 3, Verdict.INCONCLUSIVE: 2, Verdict.RUNNING: 1, Verdict.SUCCESSFUL: 0}


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """The worst verdict; an analysis with no checks is Successful."""
    return max(verdicts, key=_SEVERITY.__getitem__, default=Verdict.SUCCESSFUL)


def step_count(check: Check) -> int:
    return check.count if check.count is not None else DEFAULT_STEP_COUNT


def analysis_verdict(checks: Mapping[str, Check], runs: Mapping[str, CheckRun], *, background: bool) -> Verdict:
    """Background analyses never succeed on their own (they run until promotion)."""
    out = []
    for name, check in checks.items():
        run = runs.get(name, CheckRun())
        count = check.count if background else step_count(check)
        out.append(check_verdict(check, run, count=count))
    return combine(out)


def due(check: Check, run: CheckRun | None, started: float, now: float, *, count: int | None) -> float:
    """When the next measurement of ``check`` is due (may be <= now: due already). The first comes
    one interval after ``started`` so that the window holds canary traffic; inf when done."""
    run = run or CheckRun()
    if count is not None and run.successes >= count:
        return float("inf")
    last = run.last_at if run.last_at is not None else started
    return last + check.interval
