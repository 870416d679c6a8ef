"""`modship system validate --rollout`: what the Rollout's traffic provider cannot serve, as warnings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Cli

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SYSTEM = REPO / "examples" / "systems" / "topic-classifier.yaml"
ROLLOUT = REPO / "examples" / "rollouts" / "topic-classifier.yaml"


def test_validate_warns_what_the_chosen_provider_cannot_serve(embedded_cli: Cli) -> None:
    r = embedded_cli("system", "validate", str(SYSTEM), "--rollout", str(ROLLOUT), "--traffic", "istio", "-o", "json")
    assert r.code == 2, r.err  # the modules are not registered here: the violations still decide the exit code
    data = json.loads(r.out)
    messages = [w["message"] for w in data["warnings"]]
    assert (
        "check disagreement (disagreement): Istio mirrors requests but drops the mirrored answers, "
        "so disagreement on mirrored traffic cannot be measured"
    ) in messages
    assert any(m.startswith("check error-rate (errorRate): ") and "provider prometheus" in m for m in messages)
    table = embedded_cli("system", "validate", str(SYSTEM), "--rollout", str(ROLLOUT))
    assert "warning" not in table.out  # the example runs on the modship router: it serves everything


def test_validate_refuses_bad_capability_flags(embedded_cli: Cli, tmp_path: Path) -> None:
    r = embedded_cli("system", "validate", str(SYSTEM), "--traffic", "istio")
    assert (r.code, r.err.strip()) == (2, "error: --traffic: --traffic needs --rollout FILE (the checks to weigh)")
    r = embedded_cli("system", "validate", str(SYSTEM), "--rollout", str(tmp_path / "none.yaml"))
    assert (r.code, r.err.strip()) == (2, f"error: {tmp_path / 'none.yaml'}: file not found")
    assert "Traceback" not in r.err
