"""Why a rollout aborted (one sentence, with the deciding measurement) and the checks over time,
as the status document carries them and the terminal shows them."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console

from controller.apply import control as rules
from controller.entrypoints.views import checks_over_time, render
from controller.plan import explain
from controller.plan.reasons import Reason
from controller.plan.status import CheckRun, HistoryEntry, Measurement, Phase, RolloutStatus, Verdict
from controller.spec import control
from controller.spec.rollout import Rollout
from tests.unit.test_control import A, B

CHECKS = [
    {"name": "errors", "metric": "errorRate", "threshold": {"max": 0.05}, "failureLimit": 1, "minSamples": 5},
    {"name": "drift", "metric": "errorRate", "threshold": {"max": 0.01, "relativeTo": "stable"}, "minSamples": 5},
]


def rollout() -> Rollout:
    return Rollout.model_validate(
        {
            "apiVersion": "modship.dev/v1alpha1",
            "kind": "Rollout",
            "metadata": {"name": "sys"},
            "spec": {
                "system": "sys",
                "revision": B,
                "strategy": {"canary": {"steps": [{"setWeight": 20}, {"analysis": {"checks": ["errors", "drift"]}}]}},
                "analysis": {"checks": CHECKS},
            },
        }
    )


def aborted(reason: Reason, runs: dict[str, CheckRun], message: str = "step analysis failed") -> RolloutStatus:
    return RolloutStatus(
        phase=Phase.ABORTED, stable=A, canary=B, step=1, reason=reason, message=message, step_analysis=runs,
        history=(HistoryEntry(A, "Initial", 1.0), HistoryEntry(B, "Aborted", 40.0, reason.value)),
    )  # fmt: skip


OK = Measurement(10.0, Verdict.SUCCESSFUL, 0.01, None, 50)
BAD = Measurement(20.0, Verdict.FAILED, 0.31, None, 48)
WORSE = Measurement(30.0, Verdict.FAILED, 0.42, None, 51)
FAILED_RUN = CheckRun(successes=1, failures=2, recent=(OK, BAD, WORSE))


def document(s: RolloutStatus, **facts: Any) -> dict[str, Any]:
    f = rules.Facts(target=B, revisions={}, toggles={}, paused=False, managed=True, **facts)
    return rules.status_document("sys", rollout(), s, f).wire()


def test_a_failed_analysis_names_the_check_and_its_deciding_measurement() -> None:
    s = aborted(Reason.ANALYSIS_FAILED, {"errors": FAILED_RUN, "drift": CheckRun(successes=2)})
    why = document(s)["aborted"]
    assert why["sentence"] == (
        "Aborted because check errors (analysis) failed: 2 failing measurements (limit 1); "
        "the last: canary 0.42, above max 0.05 (51 samples)."
    )
    assert (why["reason"], why["check"], why["background"], why["threshold"]) == (
        "AnalysisFailed", "errors", False, {"max": 0.05},
    )  # fmt: skip
    assert why["measurement"] == {
        "at": 30.0, "verdict": "Failed", "value": 0.42, "stable": None, "samples": 51, "error": None, "compared": 0.42,
    }  # fmt: skip


def test_a_relative_check_compares_canary_minus_stable() -> None:
    m = Measurement(30.0, Verdict.FAILED, 0.05, 0.01, 40)
    s = aborted(Reason.ANALYSIS_FAILED, {"drift": CheckRun(failures=1, recent=(m,))})
    d = document(s)
    last = "the last: canary 0.05 vs stable 0.01 = +0.04, above max 0.01 (40 samples)."
    assert d["aborted"]["sentence"].endswith(last)
    assert abs(d["analysis"]["step"]["drift"]["recent"][0]["compared"] - 0.04) < 1e-12


def test_metrics_that_stayed_down_and_other_aborts_in_one_sentence() -> None:
    err = Measurement(30.0, Verdict.ERROR, None, None, 0, "prometheus at http://p: ConnectError")
    s = aborted(Reason.METRICS_UNAVAILABLE, {"errors": CheckRun(errors_in_row=5, recent=(err,))}, "metrics down")
    assert document(s)["aborted"]["sentence"] == (
        "Aborted because the metrics of check errors (analysis) were unavailable 5 times in a row (limit 4): "
        "prometheus at http://p: ConnectError."
    )
    s = aborted(Reason.PROGRESS_DEADLINE_EXCEEDED, {}, "no progress for 300s")
    assert document(s)["aborted"] == {
        "reason": "ProgressDeadlineExceeded",
        "sentence": "Aborted because the rollout missed its progress deadline: no progress for 300s.",
    }
    s = aborted(Reason.ABORTED_BY_USER, {}, "aborted on request")
    by = control.Actor(user="bob", reason="p99 too high")
    assert document(s, aborted_by=by)["aborted"]["sentence"] == "Aborted by bob: p99 too high."
    assert document(s)["aborted"]["sentence"] == "Aborted by a person: aborted on request."
    assert "aborted" not in document(RolloutStatus(phase=Phase.IDLE, stable=A))
    assert explain.why_aborted(None, s) is not None  # a spec that does not parse still says why


def test_the_status_document_carries_each_checks_definition() -> None:
    run = document(aborted(Reason.ANALYSIS_FAILED, {"errors": FAILED_RUN}))["analysis"]["step"]["errors"]
    assert (run["provider"], run["measures"], run["interval"], run["window"]) == ("builtin", "errorRate", 5.0, 30.0)
    assert run["limits"] == {"failureLimit": 1, "inconclusiveLimit": 2, "consecutiveErrorLimit": 4, "minSamples": 5}
    assert [m["value"] for m in run["recent"]] == [0.01, 0.31, 0.42]


def test_the_terminal_says_why_and_draws_the_checks_over_time() -> None:
    d = document(aborted(Reason.ANALYSIS_FAILED, {"errors": FAILED_RUN}))
    console = Console(width=200, record=True, color_system=None)
    console.print(render(d))
    assert "✗ Aborted because check errors (analysis) failed" in console.export_text()
    console.print(checks_over_time(d))
    lines = console.export_text().splitlines()
    assert "errors (step): max 0.05 — Failed" in lines and "  measures errorRate" in lines
    rows = [x.split() for x in lines if re.match(r"\s*\d\d:\d\d:\d\d ", x)]
    assert [(r[1], r[-1]) for r in rows] == [("0.01", "Successful"), ("0.31", "Failed"), ("0.42", "Failed")]
