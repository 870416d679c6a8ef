"""Gates, the load-test hook and notifications end to end: a real MLflow server, real bentos, the
real router and controller (`modship up`), and a real HTTP receiver playing the gates and the sinks.

No load generator runs here: the rollout's own load-test hook gives its analysis the samples."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.adapters.notify import SIGNATURE_HEADER
from tests.conftest import Cli
from tests.support import examples
from tests.support.local import Controller, status
from tests.support.receiver import Receiver, Request, down_url, receiving
from tests.support.services import free_port, wait_until

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CHECK = {
    "metric": "errorRate",
    "threshold": {"max": 0.02},
    "window": "5s",
    "interval": "1s",
    "count": 2,
    "minSamples": 5,
}


def rollout(receiver: str, dataset: Path) -> dict[str, Any]:
    return {
        "apiVersion": "modship.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "topic-classifier"},
        "spec": {
            "system": "topic-classifier",
            "strategy": {"canary": {"steps": [{"setWeight": 30}, {"analysis": {"checks": ["error-rate"]}}]}},
            "analysis": {"checks": [{"name": "error-rate", **CHECK}]},
            "policies": {"progressDeadline": "3m"},
            "gates": [
                {"name": "ship", "type": "confirm-promotion", "url": f"{receiver}/gate/ship", "interval": "1s"},
                {"name": "told", "type": "post-rollout", "url": f"{receiver}/gate/told"},
            ],
            "loadTest": {"dataset": str(dataset), "rate": 20},
        },
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, mlflow_server: Any) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("hooks")
    cli = Cli(home=tmp / "home", registry=mlflow_server.url)
    cli.home.mkdir(parents=True)
    root, _ = examples.build()
    cli.ok("module", "register", *[str(root / n) for n in examples.ORDER], "--skip-existing", timeout=900)
    dataset = tmp / "requests.jsonl"
    texts = ["Shares rose after the bank's results.", "The striker scored twice.", "A new phone was unveiled."]
    dataset.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    with receiving() as rec:
        shipping = {"open": False}  # what the confirm-promotion gate answers: 409 until a test opens it
        rec.answer = lambda req: 409 if req.path == "/gate/ship" and not shipping["open"] else 200
        base = rec.url.removesuffix("/hook")
        (tmp / "hmac.key").write_text("k3y")
        sinks = [
            {"name": "hook", "url": f"{base}/events", "hmacKey": {"file": str(tmp / "hmac.key")}},
            {"name": "team", "type": "slack", "url": f"{base}/slack"},
            {"name": "gone", "url": down_url(), "attempts": 2, "backoff": 0.1},
        ]
        subs = [{"sinks": ["hook", "gone"]}, {"sinks": ["team"], "triggers": ["promoted", "gate"]}]
        links = {"dashboard": "http://127.0.0.1:9999", "mlflow": mlflow_server.url}
        (cli.home / "notifications.yaml").write_text(yaml.safe_dump({"sinks": sinks, "subscriptions": subs,
                                                                      "links": links}))  # fmt: skip
        (tmp / "rollout.yaml").write_text(yaml.safe_dump(rollout(base, dataset)))
        controller = Controller(cli, tmp / "controller.log").start()
        port = free_port()
        system = str(REPO / "examples" / "systems" / "topic-classifier.yaml")
        cli.ok("deploy", system, "--rollout", str(tmp / "rollout.yaml"), "--port", str(port), timeout=600)
        wait_until(lambda: status(cli, "topic-classifier")["traffic"] or None, timeout=120, what="stable serving")
        try:
            yield {"cli": cli, "receiver": rec, "controller": controller, "tmp": tmp, "shipping": shipping}
        finally:
            cli("down")
            controller.stop()


def on(rec: Receiver, path: str) -> list[Request]:
    return [r for r in rec.requests if r.path == path]


def test_a_confirm_promotion_gate_holds_until_it_answers_and_everyone_is_told(stack: dict[str, Any]) -> None:
    cli, rec = stack["cli"], stack["receiver"]
    cli.ok("promote", "topic-classifier", "topic-head@2", timeout=600)
    held = wait_until(
        lambda: (s := status(cli, "topic-classifier"))["waiting"] == "Gate" and s, timeout=180, what="the gate holding"
    )
    assert held["phase"] == "Progressing" and held["reason"] == "GateHolding" and held["weight"] == 30
    assert held["message"] == "waiting for confirm-promotion gate ship (HTTP 409)"
    # the analysis passed on the load-test hook's requests alone (nothing else sends any)
    reasons = [e["reason"] for e in json.loads(cli.ok("events", "topic-classifier", "-o", "json").out)]
    assert "AnalysisSuccessful" in reasons, reasons
    asked = len(on(rec, "/gate/ship"))
    wait_until(lambda: len(on(rec, "/gate/ship")) >= asked + 2, timeout=30, what="the gate asked again")
    assert not on(rec, "/gate/told")
    stack["shipping"]["open"] = True
    done = wait_until(
        lambda: (s := status(cli, "topic-classifier"))["phase"] == "Promoted" and s, timeout=60, what="promotion"
    )
    assert "topic-head@2" in done["stable"]["modules"]
    [told] = wait_until(lambda: on(rec, "/gate/told") or None, timeout=10, what="post-rollout")
    assert (told.json()["outcome"], told.json()["type"]) == ("promoted", "post-rollout")
    gate = on(rec, "/gate/ship")[0].json()
    assert (gate["name"], gate["type"], gate["modules"]) == ("topic-classifier", "confirm-promotion", ["topic-head@2"])

    # notifications: every transition to the webhook (signed), the chosen ones to Slack
    events = wait_until(
        lambda: (ev := on(rec, "/events")) and ev[-1].json()["type"] == "dev.cdevents.service.upgraded.0.2.0" and ev,
        timeout=30,
        what="the upgrade's CloudEvent",
    )
    types = [e.json()["type"] for e in events]
    for t in ("dev.modship.rollout.rolloutstarted.v1", "dev.modship.rollout.gateholding.v1",
              "dev.modship.rollout.analysissuccessful.v1"):  # fmt: skip
        assert t in types
    assert all(e.headers[SIGNATURE_HEADER.lower()].startswith("sha256=") for e in events)
    details = events[-1].json()["data"]["customData"]
    assert details["analysis"]["error-rate"]["samples"] >= 5 and details["modules"] == ["topic-head@2"]
    slack = wait_until(lambda: len(on(rec, "/slack")) >= 2 and on(rec, "/slack"), timeout=30, what="Slack messages")
    texts = [m.json()["text"] for m in slack]
    assert any("GateHolding" in t for t in texts) and any("Promoted" in t for t in texts)
    assert "/dashboard/#/systems/topic-classifier" in json.dumps(slack[-1].json())

    # the sink that is down: dead-lettered, shown, and it held nothing up
    dead = wait_until(
        lambda: (d := json.loads(cli.ok("notify", "dead-letters", "-o", "json").out)) and len(d) >= len(types) and d,
        timeout=60,
        what="dead letters of the sink that is down",
    )
    assert {d["sink"] for d in dead} == {"gone"} and all(d["attempts"] == 2 for d in dead)
