"""Webhook gates in the state machine, tick by tick on in-memory adapters with an explicit ``now``:
what advances, what holds (and how it shows), what aborts, and who is told."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from controller.adapters.memory import MemoryGates, MemoryMetrics, MemoryStore, MemoryTarget
from controller.apply import reconcile
from controller.plan import gates as gate_plan
from controller.plan import rollout as machine
from controller.plan.actions import Event
from controller.plan.observations import Sample
from controller.plan.reasons import Reason, Waiting
from controller.plan.status import Phase, RolloutStatus
from controller.spec.rollout import Provider, Rollout

BASE: dict[str, Any] = {
    "apiVersion": "modship.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "sys"},
    "spec": {"system": "sys", "revision": "rA",
             "strategy": {"canary": {"steps": [{"setWeight": 20}, {"analysis": {"checks": ["errors"]}},
                                               {"setWeight": 60}]}},
             "analysis": {"checks": [{"name": "errors", "metric": "errorRate", "threshold": {"max": 0.05},
                                      "window": 2, "interval": 1, "count": 2, "minSamples": 10}]},
             "policies": {"progressDeadline": "30s"}},
}  # fmt: skip


class World:
    def __init__(self, gates: list[dict[str, Any]], answers: dict[str, int] | None = None) -> None:
        doc = copy.deepcopy(BASE)
        doc["spec"]["gates"] = [{"url": f"http://gates.test/{g['name']}", **g} for g in gates]
        self.store, self.target = MemoryStore(), MemoryTarget()
        self.store.rollouts["sys"] = Rollout.model_validate(doc)
        self.metrics = MemoryMetrics(lambda c, ctx: Sample(value=0.0, stable=0.0, samples=50))
        self.gates = MemoryGates(answers)
        self.events: list[Event] = []
        self.now = 1000.0
        self.run(2)  # rA: stable at once
        r = self.store.rollouts["sys"]
        self.store.rollouts["sys"] = r.model_copy(update={"spec": r.spec.model_copy(update={"revision": "rB"})})

    @property
    def status(self) -> RolloutStatus:
        return self.store.statuses["sys"]

    def run(self, seconds: float) -> None:
        until = self.now + seconds
        while self.now <= until:
            d = reconcile.reconcile_once(
                "sys", store=self.store, target=self.target, sources={Provider.BUILTIN: self.metrics}, now=self.now,
                record=self.events.append, gates=self.gates,
            )  # fmt: skip
            self.now += d.requeue_after if d.requeue_after else 0.5  # when the machine asks to be called

    def asked(self, name: str) -> list[dict[str, object]]:
        return [p for n, p in self.gates.asked if n == name]

    def reasons(self) -> list[str]:
        return [e.reason.value for e in self.events]


def test_confirm_rollout_holds_visibly_and_without_a_deadline_until_it_answers_2xx() -> None:
    w = World([{"name": "go", "type": "confirm-rollout", "interval": "2s"}], {"go": 409})
    w.run(60)  # twice the progress deadline
    s = w.status
    assert (s.phase, s.reason, s.waiting, s.traffic.weight) == (Phase.PROGRESSING, Reason.GATE_HOLDING, Waiting.GATE, 0)
    assert s.message == "waiting for confirm-rollout gate go (HTTP 409)"
    assert w.reasons().count("GateHolding") == 1  # told once, not every time it is asked
    assert 20 <= len(w.asked("go")) <= 40  # asked again every interval (2 s), not every second
    payload = w.asked("go")[0]
    assert (payload["name"], payload["type"], payload["revision"], payload["stable"]) == (
        "sys", "confirm-rollout", "rB", "rA")  # fmt: skip
    w.gates.answers["go"] = 200
    w.run(20)
    assert w.status.phase is Phase.PROMOTED and "GatePassed" in w.reasons()
    assert "ProgressDeadlineExceeded" not in w.reasons()


def test_pre_rollout_failing_more_than_its_limit_aborts_and_post_rollout_is_told() -> None:
    w = World(
        [{"name": "pre", "type": "pre-rollout", "failureLimit": 2, "interval": 1},
         {"name": "told", "type": "post-rollout"}],
        {"pre": 500},
    )  # fmt: skip
    w.run(10)
    s = w.status
    assert (s.phase, s.reason, s.stable, s.traffic.weight) == (Phase.ABORTED, Reason.GATE_FAILED, "rA", 0)
    assert s.message == "pre-rollout gate pre failed 3 time(s) (HTTP 500)"
    assert len(w.asked("pre")) == 3
    [told] = w.asked("told")
    assert (told["outcome"], told["revision"]) == ("aborted", "rB")


def test_a_pre_rollout_failure_within_the_limit_is_asked_again() -> None:
    w = World([{"name": "pre", "type": "pre-rollout", "failureLimit": 2, "interval": 1}], {"pre": 500})
    w.run(1.5)
    assert w.status.phase is Phase.PROGRESSING and w.status.gate_failures == {"pre": 1}
    w.gates.answers["pre"] = 204
    w.run(20)
    assert w.status.phase is Phase.PROMOTED


def test_confirm_traffic_increase_holds_each_raise_of_the_weight() -> None:
    w = World([{"name": "more", "type": "confirm-traffic-increase", "interval": 1}], {"more": 423})
    w.run(10)
    assert (w.status.traffic.weight, w.status.step, w.status.waiting) == (0, 0, Waiting.GATE)
    w.gates.answers["more"] = 200
    w.run(2)
    assert w.status.traffic.weight == 20
    w.gates.answers["more"] = 409
    w.run(10)
    assert (w.status.traffic.weight, w.status.step) == (20, 2)  # analysis passed; 60 % waits
    assert w.status.message == "waiting for confirm-traffic-increase gate more (HTTP 409)"
    w.gates.answers["more"] = 200
    w.run(10)
    assert w.status.phase is Phase.PROMOTED
    assert {p["step"] for p in w.asked("more")} == {0, 2}  # asked only before weight increases


def test_confirm_promotion_holds_after_the_last_step() -> None:
    w = World([{"name": "ship", "type": "confirm-promotion", "interval": 1},
               {"name": "told", "type": "post-rollout"}], {"ship": 404})  # fmt: skip
    w.run(20)
    s = w.status
    assert (s.phase, s.step, s.traffic.weight, s.waiting) == (Phase.PROGRESSING, 3, 60, Waiting.GATE)
    assert not w.asked("told")
    w.gates.answers["ship"] = 200
    w.run(3)
    assert w.status.phase is Phase.PROMOTED and w.status.stable == "rB"
    assert [p["outcome"] for p in w.asked("told")] == ["promoted"]


def test_a_rollback_gate_answering_2xx_aborts_the_canary() -> None:
    w = World([{"name": "stop", "type": "rollback", "interval": 1}], {"stop": 404})
    w.run(2)
    assert w.status.phase is Phase.PROGRESSING and w.status.traffic.weight == 20
    w.gates.answers["stop"] = 200
    w.run(2)
    s = w.status
    assert (s.phase, s.reason, s.traffic.weight) == (Phase.ABORTED, Reason.GATE_FAILED, 0)
    assert s.message == "rollback gate stop asked to roll back (HTTP 200)"


def test_promote_full_goes_past_every_gate() -> None:
    w = World([{"name": "go", "type": "confirm-rollout"}], {"go": 409})
    w.run(3)
    w.store.controls["sys"] = w.store.controls.get("sys", machine.controls_default()).__class__(promote_full=w.now)
    w.run(2)
    assert w.status.phase is Phase.PROMOTED


def test_a_status_with_gate_state_survives_storage() -> None:
    s = RolloutStatus(gates_passed=("go",), gate_failures={"pre": 2}, waiting=Waiting.GATE)
    assert RolloutStatus.from_storage(json.loads(json.dumps(s.for_storage()))) == s
    assert RolloutStatus.from_storage({"phase": "Idle"}).gates_passed == ()


def test_rollouts_without_gates_keep_their_spec_hash() -> None:
    r = Rollout.model_validate(BASE)
    body = r.spec.model_dump(mode="json", by_alias=True, exclude={"paused", "gates", "load_test"})
    old = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    assert machine.spec_hash(r) == old  # an upgrade does not restart rollouts in flight
    assert gate_plan.due(r, RolloutStatus()) == []


def test_gates_are_asked_only_once_the_canary_is_ready() -> None:
    w = World([{"name": "pre", "type": "pre-rollout", "failureLimit": 0}], {"pre": 500})
    w.target.start_delay = 5  # rB answers ready at its 6th health check
    w.run(3)
    assert w.status.phase is Phase.PROGRESSING and w.status.waiting is Waiting.CANARY
    assert not w.asked("pre")  # a pre-rollout test never runs against a canary that is not up
    w.run(10)
    assert w.status.reason is Reason.GATE_FAILED and len(w.asked("pre")) == 1
