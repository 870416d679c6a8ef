"""Analysis against a real Prometheus server (Debian's, 1 s scrape) scraping real bentos; the
server stopped mid-analysis holds the rollout (never promotes); restarted, the rollout completes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Cli
from tests.support import examples
from tests.support.local import Controller, Load, status
from tests.support.prometheus import PrometheusServer
from tests.support.services import free_port, wait_until

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
NAME = "topic-prom"


def rollout(prometheus: str) -> dict[str, Any]:
    return {
        "apiVersion": "modship.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": NAME},
        "spec": {
            "system": NAME,
            "prometheus": prometheus,
            "strategy": {"canary": {"steps": [{"setWeight": 50}, {"analysis": {"checks": ["errors"]}}]}},
            "analysis": {
                "checks": [
                    {
                        "name": "errors",
                        "provider": "prometheus",
                        "query": "template:error-rate",
                        "window": "10s",
                        "interval": "1s",
                        "count": 8,
                        "minSamples": 3,
                        "consecutiveErrorLimit": 2,
                        "inconclusiveLimit": 30,  # a restarted Prometheus has a gap: no data for a few seconds
                        "threshold": {"max": 0.05},
                    },
                ]
            },
            "policies": {"metricsDown": "hold", "progressDeadline": "5m"},
        },
    }


def ports(cli: Cli) -> dict[str, int]:
    path = cli.home / "systems" / NAME / "run" / "runtime.json"
    return {p["revision"]: p["port"] for p in json.loads(path.read_text())["revisions"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, mlflow_server: Any) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("prom")
    cli = Cli(home=tmp / "home", registry=mlflow_server.url)
    root, _ = examples.build()
    cli.ok("module", "register", *[str(root / n) for n in examples.ORDER], "--skip-existing", timeout=900)
    doc = yaml.safe_load((REPO / "examples" / "systems" / "topic-classifier.yaml").read_text())
    doc["metadata"]["name"] = NAME
    (tmp / "system.yaml").write_text(yaml.safe_dump(doc))
    prom = PrometheusServer(root=tmp / "prometheus").start()
    (tmp / "rollout.yaml").write_text(yaml.safe_dump(rollout(prom.url)))
    controller = Controller(cli, tmp / "controller.log").start()
    port = free_port()
    cli.ok("deploy", str(tmp / "system.yaml"), "--rollout", str(tmp / "rollout.yaml"), "--port", str(port), timeout=600)
    wait_until(lambda: status(cli, NAME)["traffic"] or None, timeout=120, what="stable serving")
    prom.set_targets([f"127.0.0.1:{p}" for p in ports(cli).values()])
    load = Load(f"http://127.0.0.1:{port}", tmp / "load.json").start()
    yield {"cli": cli, "prom": prom, "load": load}
    load.stop()
    cli("down")
    controller.stop()
    prom.close()


def test_prometheus_down_mid_analysis_holds_and_never_promotes(stack: dict[str, Any]) -> None:
    cli, prom, load = stack["cli"], stack["prom"], stack["load"]
    cli.ok("promote", NAME, "topic-head@2", timeout=600)
    canary = wait_until(
        lambda: (s := status(cli, NAME))["canary"] and s["canary"]["revision"], timeout=120, what="a canary"
    )
    wait_until(lambda: canary in ports(cli), timeout=60, what="the canary process")
    prom.set_targets([f"127.0.0.1:{p}" for p in ports(cli).values()])

    def measured_ok() -> bool:
        runs = status(cli, NAME)["analysis"]["step"]
        return bool(runs.get("errors", {}).get("successes", 0) >= 1)

    wait_until(measured_ok, timeout=120, what="a successful Prometheus measurement")
    prom.stop()
    held = wait_until(
        lambda: (s := status(cli, NAME))["reason"] == "MetricsUnavailable" and s, timeout=30, what="the rollout holding"
    )
    assert held["phase"] == "Progressing" and held["weight"] == 50
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # holding: weight and phase do not move while Prometheus is down
        s = status(cli, NAME)
        assert s["phase"] == "Progressing" and s["canary"]["revision"] == canary and s["weight"] == 50
        time.sleep(0.5)
    errors = [m for m in s["analysis"]["step"]["errors"]["recent"] if m["verdict"] == "Error"]
    assert errors and "prometheus" in (errors[-1]["error"] or "").lower()
    prom.start()
    r = cli("status", NAME, "--wait", "--timeout", "180", "-o", "json", timeout=240)
    assert r.code == 0, r.out + r.err
    assert json.loads(r.out)["stable"]["revision"] == canary
    assert load.stats()["failed"] == 0
