"""Webhook gates with Flagger's semantics, decided from the answers observed this cycle. Pure.

``due`` says which gates to ask before the cycle (``apply.observe`` POSTs ``payload`` to each);
the state machine then reads the answers: a gate answers for the step the status was at when it was
asked, so a step reached later in the same cycle waits one cycle for its own answer.

Gates are asked once the canary is ready (a pre-rollout gate typically tests it).

- confirm-rollout: before the canary's first step, once per rollout; holds until 2xx.
- pre-rollout: after confirm-rollout, before the first step; a failure is counted and re-asked, more
  than ``failureLimit`` failures abort the canary (``GateFailed``).
- confirm-traffic-increase: before every step that raises the canary's weight; holds until 2xx.
- confirm-promotion: after the last step, before promotion; holds until 2xx.
- rollback: every cycle while the canary progresses; 2xx aborts it.
- post-rollout: told the outcome after a promotion or an abort (``CallGate``); its answer is only logged.

A holding gate is the status' ``waiting: Gate`` with reason ``GateHolding`` and a message naming the
gate and its answer; ``promote --full`` (a person) goes past every gate.
"""

from __future__ import annotations

from dataclasses import replace

from controller.plan import transitions
from controller.plan.actions import CallGate, Event
from controller.plan.observations import GateAnswer, Observations
from controller.plan.reasons import Reason, Waiting
from controller.plan.status import Phase, RolloutStatus
from controller.spec.rollout import Gate, GateType, Rollout

Events = tuple[Event, ...]
_ONCE = (GateType.CONFIRM_ROLLOUT, GateType.PRE_ROLLOUT)


def of(r: Rollout, kind: GateType) -> list[Gate]:
    return [g for g in r.spec.gates if g.type is kind]


def due(r: Rollout, s: RolloutStatus, *, canary_ready: bool = True) -> list[Gate]:
    """The gates to ask before this cycle's decision (none before the canary is ready: a
    pre-rollout gate typically tests it)."""
    if not s.in_flight or not r.spec.gates or not canary_ready:
        return []
    confirmed = all(g.name in s.gates_passed for g in of(r, GateType.CONFIRM_ROLLOUT))
    out = [g for g in of(r, GateType.CONFIRM_ROLLOUT) if g.name not in s.gates_passed]
    if confirmed:
        out += [g for g in of(r, GateType.PRE_ROLLOUT) if g.name not in s.gates_passed]
    if s.phase is Phase.PROGRESSING:
        if s.step < len(r.steps) and _raises_weight(r, s):
            out += of(r, GateType.CONFIRM_TRAFFIC_INCREASE)
        if s.step >= len(r.steps):
            out += of(r, GateType.CONFIRM_PROMOTION)
        out += of(r, GateType.ROLLBACK)
    return out


def payload(r: Rollout, s: RolloutStatus, g: Gate, *, outcome: str | None = None) -> dict[str, object]:
    """What a gate is POSTed (Flagger's fields, and modship's)."""
    body: dict[str, object] = {
        "name": r.spec.system,
        "namespace": r.metadata.namespace or "default",
        "phase": s.phase.value,
        "type": g.type.value,
        "gate": g.name,
        "revision": s.canary,
        "stable": s.stable,
        "step": s.step,
        "weight": s.traffic.weight,
        "modules": list(r.spec.modules),
        "metadata": dict(g.metadata),
    }
    if outcome is not None:
        body["outcome"] = outcome
    return body


def before_steps(r: Rollout, s: RolloutStatus, obs: Observations, now: float) -> tuple[RolloutStatus, Events, bool]:
    """Rollback, confirm-rollout and pre-rollout gates; True when the rollout must stop here."""
    if not r.spec.gates:
        return s, (), False
    for g in of(r, GateType.ROLLBACK):
        a = obs.gates.get(g.name)
        if a is not None and a.ok:
            why = f"rollback gate {g.name} asked to roll back ({a.message})"
            return *transitions.abort(s, Reason.GATE_FAILED, why, now), True
    events: Events = ()
    for g in [*of(r, GateType.CONFIRM_ROLLOUT), *of(r, GateType.PRE_ROLLOUT)]:
        if g.name in s.gates_passed:
            continue
        a = _answer(obs, g, s)
        if a is not None and not a.ok and g.type is GateType.PRE_ROLLOUT:
            n = s.gate_failures.get(g.name, 0) + 1
            s = replace(s, gate_failures={**s.gate_failures, g.name: n})
            if n > g.failure_limit:
                why = f"pre-rollout gate {g.name} failed {n} time(s) ({a.message})"
                s, more = transitions.abort(s, Reason.GATE_FAILED, why, now)
                return s, events + more, True
        if a is None or not a.ok:
            s, more = _hold(s, g, a)
            return s, events + more, True
        s, more = _pass(s, g, a, now)
        events += more
    return s, events, False


Checked = tuple[RolloutStatus, Events, bool]  # the status, its events, and whether to hold here


def confirm_traffic(r: Rollout, s: RolloutStatus, obs: Observations, now: float) -> Checked:
    """Before a step raises the weight."""
    return _confirm(r, s, obs, GateType.CONFIRM_TRAFFIC_INCREASE, now) if _raises_weight(r, s) else (s, (), False)


def confirm_promotion(r: Rollout, s: RolloutStatus, obs: Observations, now: float) -> Checked:
    return _confirm(r, s, obs, GateType.CONFIRM_PROMOTION, now)


def after(r: Rollout, s: RolloutStatus, events: Events) -> tuple[CallGate, ...]:
    """post-rollout calls for a cycle that promoted or aborted the canary."""
    ended = next((e for e in events if e.reason is Reason.PROMOTED or e.reason.rolled_back), None)
    if ended is None or not r.spec.gates:
        return ()
    outcome = "promoted" if ended.reason is Reason.PROMOTED else "aborted"
    return tuple(
        CallGate(g.name, tuple(payload(r, s, g, outcome=outcome).items())) for g in of(r, GateType.POST_ROLLOUT)
    )


def interval(r: Rollout) -> float:
    """How soon to look again while a gate holds."""
    return min((g.interval for g in r.spec.gates), default=5.0)


def _confirm(r: Rollout, s: RolloutStatus, obs: Observations, kind: GateType, now: float) -> Checked:
    events: Events = ()
    for g in of(r, kind):
        a = _answer(obs, g, s)
        if a is None or not a.ok:
            s, more = _hold(s, g, a)
            return s, events + more, True
        if s.reason is Reason.GATE_HOLDING:
            s, more = _pass(s, g, a, now)
            events += more
    return s, events, False


def _answer(obs: Observations, g: Gate, s: RolloutStatus) -> GateAnswer | None:
    a = obs.gates.get(g.name)
    return a if a is not None and a.step == s.step else None


def _hold(s: RolloutStatus, g: Gate, a: GateAnswer | None) -> tuple[RolloutStatus, Events]:
    if a is None:  # reached this cycle: asked at the next one (the reason stays what it was)
        msg = f"asking {g.type.value} gate {g.name}"
        return replace(s, message=msg, waiting=Waiting.GATE_ASK), ()
    msg = f"waiting for {g.type.value} gate {g.name} ({a.message})"
    events: Events = ()
    if s.reason is not Reason.GATE_HOLDING:
        events = (Event(Reason.GATE_HOLDING, f"step {s.step}: {msg}"),)
    return replace(s, reason=Reason.GATE_HOLDING, message=msg, waiting=Waiting.GATE), events


def _pass(s: RolloutStatus, g: Gate, a: GateAnswer, now: float) -> tuple[RolloutStatus, Events]:
    """A gate let the rollout through; time spent holding is not a lack of progress."""
    passed = s.gates_passed + ((g.name,) if g.type in _ONCE else ())
    waited = s.reason is Reason.GATE_HOLDING
    s = replace(s, gates_passed=passed, step_started=now if waited else s.step_started, waiting=None)
    if waited:
        s = replace(s, reason=Reason.GATE_PASSED, message=f"{g.type.value} gate {g.name} passed")
    return s, (Event(Reason.GATE_PASSED, f"step {s.step}: {g.type.value} gate {g.name} answered {a.message}"),)


def _raises_weight(r: Rollout, s: RolloutStatus) -> bool:
    st = r.steps[s.step] if s.step < len(r.steps) else None
    if st is None or st.set_weight is None:
        return False
    return min(st.set_weight, r.spec.strategy.canary.max_weight) > s.traffic.weight
