"""``modship status --wait``: its exit codes (0 promoted, 1 aborted or rolled back, 7 timed out)."""

from __future__ import annotations

from typing import Any

import pytest

from controller.entrypoints import cli_rollout
from controller.entrypoints.output import Format


def doc(
    phase: str, *, stable: str | None = "A", canary: str | None = None, target: str | None = "B", reason: str = ""
) -> Any:
    return {
        "system": "sys",
        "phase": phase,
        "reason": reason,
        "message": "",
        "target": target,
        "stable": {"revision": stable} if stable else None,
        "canary": {"revision": canary} if canary else None,
    }


@pytest.mark.parametrize(
    ("d", "code"),
    [
        (doc("Promoted", stable="B"), 0),
        (doc("Idle", stable="B", reason="RolledBack"), 1),
        (doc("Aborted", canary="B", reason="AnalysisFailed"), 1),
        (doc("Progressing", canary="B"), 7),
        (doc("Idle", stable=None, target=None), 7),
    ],
    ids=["promoted", "rolled back", "aborted", "timed out", "no revision yet"],
)
def test_the_exit_code_of_a_wait(d: dict[str, Any], code: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_rollout._wait(lambda: d, 0.0, Format.JSON) == code
    assert '"phase"' in capsys.readouterr().out
    assert cli_rollout.EXIT_WAIT_TIMEOUT == 7  # not 2: that is bad input
