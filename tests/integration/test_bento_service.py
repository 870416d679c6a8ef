"""Composed systems built with real `bentoml build` and served by real `bentoml serve` processes."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Cli
from tests.support import examples
from tests.support.examples import variant
from tests.support.services import BentoServer, wait_until

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SYSTEM = REPO / "examples" / "systems" / "topic-classifier.yaml"
SMOKE = {
    "Shares in the carmaker rose after profits beat forecasts.": "business",
    "The striker scored twice as the champions won the derby.": "sport",
    "Ministers unveiled the budget ahead of the general election.": "politics",
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, mlflow_server: Any) -> Iterator[tuple[Cli, Path]]:
    """Example modules + a failing head (v3) + a slow evaluator (v2), registered on real MLflow."""
    tmp = tmp_path_factory.mktemp("bento")
    cli = Cli(home=tmp / "home", registry=mlflow_server.url)
    root, _ = examples.build()
    dirs = [str(root / n) for n in examples.ORDER]
    cli.ok("module", "register", *dirs, "--skip-existing", timeout=900)
    faulty = variant(root / "topic-head-v1", tmp / "head-faulty", faults={"errorRate": 1.0})
    slow = variant(root / "confidence-v1", tmp / "conf-slow", faults={"delayMs": 400})
    out = json.loads(cli.ok("module", "register", str(faulty), str(slow), "--skip-existing", "-o", "json").out)
    refs = {r["name"]: f"{r['name']}@{r['version']}" for r in out}
    doc = yaml.safe_load(SYSTEM.read_text())
    steps = {s["name"]: s for s in doc["spec"]["steps"]}
    steps["head"]["module"] = refs["topic-head"]
    steps["head"]["fallback"] = {"module": "topic-head@2", "when": ["error"]}
    steps["evaluator"]["module"] = refs["confidence"]
    steps["evaluator"]["fallback"] = {"default": {"score": 0.0, "passed": False}, "when": ["timeout"], "timeoutMs": 100}
    doc["metadata"]["name"] = "topic-faulty"
    doc["spec"].pop("smoke")
    (tmp / "faulty.yaml").write_text(yaml.safe_dump(doc))
    yield cli, tmp


@pytest.fixture(scope="module")
def served(workspace: tuple[Cli, Path]) -> Iterator[dict[str, BentoServer]]:
    cli, tmp = workspace
    servers = {}
    for name, spec in (("good", SYSTEM), ("faulty", tmp / "faulty.yaml")):
        tag = json.loads(cli.ok("system", "build", str(spec), "-o", "json", timeout=900).out)["bento"]
        tracing = {"MODSHIP_TRACING": "console"} if name == "good" else {}
        servers[name] = BentoServer(tag, cli.home / "bentoml", tmp / f"{name}.log", **tracing).start()
    yield servers
    for s in servers.values():
        s.stop()


def metrics(server: BentoServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }


def metric(server: BentoServer, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in metrics(server).items() if n == name and set(labels.items()) <= ls)


def test_predictions_for_known_inputs(served: dict[str, BentoServer]) -> None:
    s = served["good"]
    for text, label in SMOKE.items():
        r = httpx.post(f"{s.url}/predict", json={"text": text}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["prediction"][0]["label"] == label
        assert body["meta"]["revision"] == r.headers["x-modship-revision"] == s.tag.split(":")[1]
        assert body["meta"]["modules"]["encoder"] == "text-encoder@1"
        assert body["evaluation"][0]["passed"] in (True, False)
    batch = httpx.post(f"{s.url}/predict", json={"text": list(SMOKE)}, timeout=30).json()
    assert [p["label"] for p in batch["prediction"]] == list(SMOKE.values())
    assert metric(s, "modship_step_duration_seconds_count", step="encoder", module="text-encoder", version="1") >= 4
    assert metric(s, "modship_predictions_total", predicted="sport") >= 1


def test_a_raising_module_falls_back_and_a_slow_one_times_out(served: dict[str, BentoServer]) -> None:
    s = served["faulty"]
    r = httpx.post(
        f"{s.url}/predict", json={"text": "The striker scored twice as the champions won the derby."}, timeout=30
    )
    assert r.status_code == 200, r.text
    body = r.json()
    reasons = {f["step"]: (f["reason"], f["used"]) for f in body["meta"]["fallbacks"]}
    assert reasons["head"] == ("error", "topic-head@2")
    assert reasons["evaluator"] == ("timeout", "default")
    assert body["prediction"][0]["label"] == "sport"  # answered by the fallback head
    assert "head:error" in r.headers["x-modship-fallback"]
    assert metric(s, "modship_step_fallbacks_total", step="head", reason="error") >= 1
    assert metric(s, "modship_step_errors_total", step="head", reason="exception") >= 1
    assert metric(s, "modship_step_fallbacks_total", step="evaluator", reason="timeout") >= 1


def test_a_repeated_input_hits_the_cache(served: dict[str, BentoServer]) -> None:
    s = served["good"]
    before = metric(s, "modship_step_cache_hits_total", step="encoder")
    text = "A repeated sentence about the election results and the parliament."
    first = httpx.post(f"{s.url}/predict", json={"text": text}, timeout=30).json()
    second = httpx.post(f"{s.url}/predict", json={"text": text}, timeout=30).json()
    assert "encoder" not in first["meta"]["cached"] and "encoder" in second["meta"]["cached"]
    assert second["outputs"] == first["outputs"]
    assert metric(s, "modship_step_cache_hits_total", step="encoder") == before + 1
    assert metric(s, "modship_step_cache_misses_total", step="encoder") >= 1


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"text": 42}', "must be text"),
        (b'{"text": ""}', "shorter than"),
        (b'{"words": "hello there"}', "missing input 'text'"),
        (json.dumps({"text": "x" * 6000}).encode(), "limit is 5000"),
        (b'{"text": "\\u0000\\u0001"}', "shorter than"),
    ],
)
def test_bad_requests_get_4xx_with_a_clear_message(served: dict[str, BentoServer], body: bytes, needle: str) -> None:
    s = served["good"]
    r = httpx.post(f"{s.url}/predict", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400
    assert needle in r.json()["error"]


def test_client_errors_are_not_logged_as_server_errors(served: dict[str, BentoServer]) -> None:
    s = served["good"]
    httpx.post(f"{s.url}/predict", content=b'{"text": 1}', timeout=30)
    assert "[ERROR]" not in s.log.read_text()
    assert metric(s, "modship_requests_total", outcome="client_error") >= 1


def test_noop_route_parses_json_and_answers_without_running_the_system(served: dict[str, BentoServer]) -> None:
    url = served["good"].url
    before = metric(served["good"], "modship_requests_total")
    r = httpx.post(f"{url}/noop", json={"text": "The striker scored twice."}, timeout=10)
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert httpx.post(f"{url}/noop", content=b"{oops", timeout=10).status_code == 400
    assert metric(served["good"], "modship_requests_total") == before
    assert "x-modship-cache" not in httpx.post(f"{url}/predict", json={"text": "A quiet day."}, timeout=30).headers


def test_health_endpoints_answer_quickly(served: dict[str, BentoServer]) -> None:
    for path in ("/healthz", "/livez", "/readyz"):
        assert httpx.get(f"{served['good'].url}{path}", timeout=2).status_code == 200


def test_a_tampered_module_refuses_to_load(workspace: tuple[Cli, Path], served: dict[str, BentoServer]) -> None:
    cli, tmp = workspace
    home = cli.home / "bentoml"
    tag = served["good"].tag
    name, rev = tag.split(":")
    tampered_home = tmp / "tampered-bentoml"
    shutil.copytree(home / "bentos" / name / rev, tampered_home / "bentos" / name / rev)
    target = tampered_home / "bentos" / name / rev / "src" / "modules" / "topic-head-1" / "head.npz"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    from controller.adapters import bento

    proc = subprocess.run(
        bento.serve_command(tampered_home / "bentos" / name / rev, host="127.0.0.1", port=1),
        env=bento.serve_env(tmp / "private"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "digest mismatch in head.npz" in proc.stderr + proc.stdout


def test_failing_contract_tests_stop_the_build(workspace: tuple[Cli, Path]) -> None:
    cli, tmp = workspace
    doc = yaml.safe_load(SYSTEM.read_text())
    doc["metadata"]["name"] = "topic-wrong"
    doc["spec"]["smoke"][0]["expect"]["label"] = "tech"  # a business headline: wrong on purpose
    (tmp / "wrong.yaml").write_text(yaml.safe_dump(doc))
    r = cli("system", "build", str(tmp / "wrong.yaml"), timeout=600)
    assert r.code != 0
    assert "smoke[0]: expected label 'tech', got 'business'" in r.err
    assert not (cli.home / "bentoml" / "bentos" / "topic-wrong").exists()


def test_spans_per_step_are_exported(served: dict[str, BentoServer]) -> None:
    """Console tracing by default: one span per request and per step, in BentoML's trace."""
    s = served["good"]
    httpx.post(f"{s.url}/predict", json={"text": "A sentence to trace through every step of the system."}, timeout=30)

    def spans() -> list[str]:
        names = [
            n for n in ("modship.predict", "step guard", "step encoder", "step head") if f'"{n}"' in s.log.read_text()
        ]
        return names if len(names) == 4 else []

    assert wait_until(spans, timeout=30, what="spans in the service log")
