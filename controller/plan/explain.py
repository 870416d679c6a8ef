"""Why a rollout aborted, in one sentence, with the measurement that decided it.

Pure: from the rollout spec and the persisted status (an abort keeps the analysis runs it judged,
so the deciding measurement is still there). The terminal, the dashboard and notifications show
the same ``Cause``; nothing is ever decided on its text.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.plan import analysis
from controller.plan.reasons import Reason
from controller.plan.status import CheckRun, Measurement, Phase, RolloutStatus, Verdict
from controller.spec.rollout import Check, Rollout


@dataclass(frozen=True, slots=True)
class Cause:
    reason: Reason
    sentence: str
    check: str | None = None  # the check whose verdict decided (analysis and metrics aborts)
    background: bool = False  # the check ran in the background analysis, not a step's
    measurement: Measurement | None = None  # its last measurement with the deciding verdict


def compared(check: Check, m: Measurement) -> float | None:
    """What was held against the threshold: the canary's figure, or canary - stable."""
    if m.value is None:
        return None
    if check.threshold.relative_to == "stable":
        return None if m.stable is None else m.value - m.stable
    return m.value


def why_aborted(r: Rollout | None, s: RolloutStatus) -> Cause | None:
    """None unless the rollout is Aborted."""
    if s.phase is not Phase.ABORTED:
        return None
    if r is not None and s.reason in (Reason.ANALYSIS_FAILED, Reason.METRICS_UNAVAILABLE):
        wanted = Verdict.FAILED if s.reason is Reason.ANALYSIS_FAILED else Verdict.ERROR
        for background, runs in ((False, s.step_analysis), (True, s.background)):
            for name, run in runs.items():
                check = _check(r, name)
                if check is None:
                    continue
                count = check.count if background else analysis.step_count(check)
                if analysis.check_verdict(check, run, count=count) is wanted:
                    return _decided(s.reason, check, run, background=background)
    return Cause(s.reason, _plain(s))


def _check(r: Rollout, name: str) -> Check | None:
    return next((c for c in r.spec.analysis.checks if c.name == name), None)


def _decided(reason: Reason, check: Check, run: CheckRun, *, background: bool) -> Cause:
    verdict = Verdict.FAILED if reason is Reason.ANALYSIS_FAILED else Verdict.ERROR
    m = next((x for x in reversed(run.recent) if x.verdict is verdict), None)
    where = "background analysis" if background else "analysis"
    if reason is Reason.METRICS_UNAVAILABLE:
        err = f": {m.error}" if m is not None and m.error else ""
        sentence = (
            f"Aborted because the metrics of check {check.name} ({where}) were unavailable "
            f"{run.errors_in_row} times in a row (limit {check.consecutive_error_limit}){err}."
        )
        return Cause(reason, sentence, check.name, background, m)
    times = f"{run.failures} failing measurement{'s' if run.failures != 1 else ''}"
    sentence = f"Aborted because check {check.name} ({where}) failed: {times} (limit {check.failure_limit})"
    if m is not None:
        sentence += f"; the last: {describe(check, m)}"
    return Cause(reason, sentence + ".", check.name, background, m)


def describe(check: Check, m: Measurement) -> str:
    """``canary 0.31 vs stable 0.002 = +0.308, above max 0.05 (40 samples)``."""
    t = check.threshold
    x = compared(check, m)
    if x is None:
        return f"no figure ({m.samples} samples)"
    if t.relative_to == "stable":
        figure = f"canary {_n(m.value)} vs stable {_n(m.stable)} = {x:+.4g}"
    else:
        figure = f"canary {_n(m.value)}" + (f" (stable {_n(m.stable)})" if m.stable is not None else "")
    if t.max is not None and x > t.max:
        bound = f"above max {t.max:g}"
    elif t.min is not None and x < t.min:
        bound = f"below min {t.min:g}"
    else:
        parts = [f"{k} {v:g}" for k, v in (("min", t.min), ("max", t.max)) if v is not None]
        bound = "within " + " and ".join(parts)
    return f"{figure}, {bound} ({m.samples} samples)"


def _n(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _plain(s: RolloutStatus) -> str:
    what = {
        Reason.ABORTED_BY_USER: "Aborted by a person",
        Reason.CANARY_FAILED: "Aborted because the canary failed",
        Reason.PROGRESS_DEADLINE_EXCEEDED: "Aborted because the rollout missed its progress deadline",
        Reason.ANALYSIS_FAILED: "Aborted because an analysis failed",
        Reason.METRICS_UNAVAILABLE: "Aborted because the metrics were unavailable",
    }.get(s.reason, "Aborted")
    return f"{what}: {s.message}." if s.message else f"{what}."
