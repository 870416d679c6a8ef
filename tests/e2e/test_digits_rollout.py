"""Bring your own modules, end to end, in a second modality: models logged to a real MLflow server by
a script (scikit-learn heads), adopted into modship, composed with an ONNX graph and a python
component, contract-tested, built, deployed on the local runtime and canary-rolled out under steady
traffic of real digit images: a better head is promoted, a head trained on misaligned labels is
rolled back automatically — no client request fails."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli
from tests.support.local import Controller, Load, status
from tests.support.services import MlflowServer, free_port, wait_until

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "examples" / "digits"
SYSTEM = "digit-reader"


def bodies(path: Path, n: int = 200) -> Path:
    from sklearn.datasets import load_digits

    images = load_digits().images[-n:]
    path.write_text(json.dumps([{"image": img.tolist()} for img in images]))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, mlflow_server: MlflowServer) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("digits")
    cli = Cli(home=tmp / "home", registry=mlflow_server.url)
    subprocess.run(
        [sys.executable, str(DIGITS / "build.py"), "--out", str(tmp / "modules"), "--tracking-uri", mlflow_server.url],
        check=True,
        capture_output=True,
        timeout=600,
    )
    cli.ok("module", "register", str(tmp / "modules" / "digits-preprocess-v1"), str(tmp / "modules" / "digits-pca-v1"))
    for v in (1, 2, 3):
        got = json.loads(
            cli.ok(
                "module", "adopt", f"models:/digits-classifier/{v}", "--name", "digits-head",
                "--overlay", str(DIGITS / "head-overlay.yaml"), "-o", "json",
            ).out
        )  # fmt: skip
        assert got["version"] == v
    controller = Controller(cli, tmp / "controller.log").start()
    port = free_port()
    cli.ok("deploy", str(DIGITS / "system.yaml"), "--rollout", str(DIGITS / "rollout.yaml"), "--port", str(port))
    wait_until(lambda: status(cli, SYSTEM)["traffic"] or None, timeout=120, what="stable serving")
    load = Load(f"http://127.0.0.1:{port}", tmp / "load.json", rate=25, bodies=bodies(tmp / "bodies.json")).start()
    yield {"cli": cli, "load": load, "port": port}
    load.stop()
    cli("down")
    controller.stop()


def test_adopted_modules_carry_contract_requirements_and_provenance(stack: dict[str, Any]) -> None:
    head = json.loads(stack["cli"].ok("module", "show", "digits-head@1", "-o", "json").out)
    assert head["runtime"]["kind"] == "mlflow"
    assert any(r.startswith("scikit-learn==") for r in head["runtime"]["requirements"])
    assert head["contract"]["inputs"]["input"] == {"dtype": "float32", "shape": [-1, 16], "space": "digits-pca16-v1"}
    assert head["contract"]["outputs"]["output"]["labels"] == [str(i) for i in range(10)]
    assert head["metadata"]["provenance"]["origin"] == "models:/digits-classifier/1"
    assert any(f.startswith("model/") for f in head["files"]) and "golden.json" in head["files"]


def test_images_are_answered_and_bad_ones_refused(stack: dict[str, Any]) -> None:
    import httpx
    from sklearn.datasets import load_digits

    d = load_digits()
    url = f"http://127.0.0.1:{stack['port']}/predict"
    r = httpx.post(url, json={"image": d.images[:8].tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    labels = [p["label"] for p in r.json()["prediction"]]
    assert sum(a == str(b) for a, b in zip(labels, d.target[:8], strict=True)) >= 6
    bad = httpx.post(url, json={"image": (d.images[0] * 10).tolist()}, timeout=30)
    assert bad.status_code == 400 and "outside the contract range" in bad.json()["error"]
    bad = httpx.post(url, json={"image": [[1.0, 2.0]]}, timeout=30)
    assert bad.status_code == 400 and "dimension 1" in bad.json()["error"]


def test_a_better_head_is_promoted(stack: dict[str, Any]) -> None:
    cli, load = stack["cli"], stack["load"]
    before = load.stats()["failed"]
    cli.ok("promote", SYSTEM, "digits-head@2", timeout=600)
    r = cli("status", SYSTEM, "--wait", "--timeout", "180", "-o", "json", timeout=240)
    assert r.code == 0, r.out + r.err
    s = json.loads(r.out)
    assert s["phase"] == "Promoted" and "digits-head@2" in s["stable"]["modules"]
    assert load.stats()["failed"] == before


def test_a_head_trained_on_misaligned_labels_is_rolled_back(stack: dict[str, Any]) -> None:
    cli, load = stack["cli"], stack["load"]
    wait_until(lambda: status(cli, SYSTEM)["phase"] in ("Idle", "Promoted", "Aborted"), timeout=60, what="steady")
    before = load.stats()["failed"]
    cli.ok("promote", SYSTEM, "digits-head@3", timeout=600)
    r = cli("status", SYSTEM, "--wait", "--timeout", "180", "-o", "json", timeout=240)
    assert r.code == 1, r.out + r.err
    s = json.loads(r.out)
    assert (s["phase"], s["reason"]) == ("Aborted", "AnalysisFailed")
    assert "digits-head@2" in s["stable"]["modules"]
    failed = [m for m in s["analysis"]["step"]["disagreement"]["recent"] if m["verdict"] == "Failed"]
    assert failed and failed[-1]["value"] > 0.15  # caught on mirrored traffic, before any user saw it
    assert load.stats()["failed"] == before
