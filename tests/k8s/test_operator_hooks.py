"""The operator with gates and notifications on a real control plane: a confirm-promotion gate
holds a Rollout (visible in its status) until a real HTTP receiver answers 2xx, and the same sender
the local controller uses delivers every transition to that receiver as a CloudEvent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.k8s.operator_support import poll, rev, rollout_doc
from tests.k8s.test_operator import Cluster, StartOperator, cluster, ns, operators  # noqa: F401 (fixtures)
from tests.support.receiver import receiving

pytestmark = [pytest.mark.k8s, pytest.mark.slow]


def test_a_gate_holds_a_rollout_and_every_transition_is_a_cloudevent(
    cluster: Cluster,  # noqa: F811
    ns: str,  # noqa: F811
    operators: StartOperator,  # noqa: F811
    tmp_path: Path,
) -> None:
    with receiving() as rec:
        open_gate = {"ship": False}
        rec.answer = lambda req: 200 if req.path != "/gate" or open_gate["ship"] else 409
        base = rec.url.removesuffix("/hook")
        cfg = {"sinks": [{"name": "hook", "url": f"{base}/events"}], "subscriptions": [{"sinks": ["hook"]}]}
        (tmp_path / "notifications.yaml").write_text(json.dumps(cfg))
        doc = rollout_doc("shop", revision=rev(1), steps=[{"setWeight": 50}])
        doc["spec"]["gates"] = [{"name": "ship", "type": "confirm-promotion", "url": f"{base}/gate", "interval": 1}]
        cluster.apply(ns, doc)
        env = {"MODSHIP_NOTIFICATIONS": str(tmp_path / "notifications.yaml"),
               "MODSHIP_DEAD_LETTER": str(tmp_path / "dead.jsonl")}  # fmt: skip
        operators("a", env=env)
        cluster.wait_phase(ns, "shop", "Idle", stable=rev(1))
        cluster.promote(ns, "shop", rev(2))
        held = poll(
            "the gate to hold", lambda: (st := cluster.status(ns, "shop")).get("reason") == "GateHolding" and st
        )
        assert (
            held["phase"] == "Progressing" and held["message"] == "waiting for confirm-promotion gate ship (HTTP 409)"
        )
        asked = poll("the gate asked twice", lambda: len([r for r in rec.requests if r.path == "/gate"]) >= 2)
        assert asked
        gate = next(r for r in rec.requests if r.path == "/gate").json()
        assert (gate["name"], gate["namespace"], gate["revision"], gate["weight"]) == ("shop", ns, rev(2), 50)
        open_gate["ship"] = True
        cluster.wait_phase(ns, "shop", "Promoted", stable=rev(2))

        def upgraded() -> list[str]:
            types = [r.json()["type"] for r in rec.requests if r.path == "/events"]
            return types if "dev.cdevents.service.upgraded.0.2.0" in types else []

        types = poll("the upgrade's CloudEvent", upgraded)
    assert types[0] == "dev.cdevents.service.deployed.0.2.0"
    assert "dev.modship.rollout.rolloutstarted.v1" in types and "dev.modship.rollout.gateholding.v1" in types
    assert not (tmp_path / "dead.jsonl").exists()
