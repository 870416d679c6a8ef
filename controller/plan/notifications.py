"""Transitions as CloudEvents (CDEvents types where one fits), who subscribed to them, and the Slack
and Teams messages that tell people. Pure: the sender (``adapters.notify``) does the I/O.

Every event a decision emits becomes one CloudEvent 1.0 in structured JSON. A service deployed,
upgraded (promoted) or rolled back (an abort sends all traffic back to stable too) is a CDEvent of
that type whose ``customData`` carries modship's fields; any other transition has the type
``dev.modship.rollout.<reason>.v1`` with modship's fields as its data. The id is derived from the
system, the transition and its time, so a receiver can drop a repeat.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from controller.plan.actions import Event
from controller.plan.reasons import Reason
from controller.plan.status import CheckRun, RolloutStatus
from controller.spec.notifications import Links, Notifications, SinkType, Trigger
from controller.spec.rollout import Rollout

CDEVENTS_VERSION = "0.4.1"
SOURCE = "/modship/controller"
_CDEVENT = {
    Reason.INITIALIZED: "dev.cdevents.service.deployed.0.2.0",
    Reason.PROMOTED: "dev.cdevents.service.upgraded.0.2.0",
}
_ROLLED_BACK = "dev.cdevents.service.rolledback.0.2.0"
_TRIGGERS = {
    Reason.ROLLOUT_STARTED: Trigger.STARTED,
    Reason.ROLLOUT_RESTARTED: Trigger.STARTED,
    Reason.PROMOTED: Trigger.PROMOTED,
    Reason.ROLLED_BACK: Trigger.ROLLED_BACK,
    Reason.ANALYSIS_INCONCLUSIVE: Trigger.ANALYSIS_INCONCLUSIVE,
    Reason.METRICS_UNAVAILABLE: Trigger.METRICS_DOWN,
}
# reasons other branches add (approvals, gates): known by their value until both are merged
_TRIGGERS_BY_VALUE = {
    "AwaitingApproval": Trigger.AWAITING_APPROVAL,
    "Rejected": Trigger.ABORTED,
    "GateHolding": Trigger.GATE,
    "GateFailed": Trigger.GATE,
    "GatePassed": Trigger.GATE,
}
_ABORTS = frozenset(
    {
        Reason.ABORTED,
        Reason.ABORTED_BY_USER,
        Reason.ANALYSIS_FAILED,
        Reason.CANARY_FAILED,
        Reason.PROGRESS_DEADLINE_EXCEEDED,
        Reason.TARGET_REVERTED,
    }
)


@dataclass(frozen=True, slots=True)
class CloudEvent:
    id: str
    type: str
    subject: str
    time: str  # RFC 3339
    data: dict[str, Any]
    source: str = SOURCE

    def to_dict(self) -> dict[str, Any]:
        return {
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.subject,
            "time": self.time,
            "datacontenttype": "application/json",
            "data": self.data,
        }

    @property
    def details(self) -> dict[str, Any]:
        """modship's fields, wherever the type puts them."""
        inner = self.data.get("customData")
        return inner if isinstance(inner, dict) else self.data


def trigger_of(e: Event, after: RolloutStatus) -> Trigger | None:
    """The trigger an event answers to (None: only subscriptions to every transition hear it)."""
    if e.reason in _ABORTS or (e.reason is Reason.METRICS_UNAVAILABLE and after.reason.rolled_back):
        return Trigger.ABORTED if e.reason is not Reason.METRICS_UNAVAILABLE else Trigger.METRICS_DOWN
    return _TRIGGERS.get(e.reason) or _TRIGGERS_BY_VALUE.get(e.reason.value)


def sinks_for(cfg: Notifications, system: str, trigger: Trigger | None) -> list[str]:
    """Names of the sinks subscribed to this system and trigger, each once, in config order."""
    out: list[str] = []
    for sub in cfg.subscriptions:
        if sub.system not in ("*", system):
            continue
        if sub.triggers and trigger not in sub.triggers:
            continue
        out += [n for n in sub.sinks if n not in out]
    return out


def analysis_of(before: RolloutStatus, after: RolloutStatus) -> dict[str, dict[str, Any]]:
    """Each check's latest measurement in this rollout: what the status keeps of it after its step
    (``decided``, saved with the status, so a restarted controller still reports it), else the
    runs in the cycle's statuses (a status saved before ``decided`` existed)."""
    runs = {**before.background, **before.step_analysis, **before.decided}
    runs |= {**after.background, **after.step_analysis, **after.decided}
    return {name: _last(run) for name, run in sorted(runs.items()) if run.recent}


def cloud_events(
    r: Rollout,
    before: RolloutStatus,
    after: RolloutStatus,
    events: list[Event],
    *,
    now: float,
    links: Links,
    analysis: dict[str, dict[str, Any]] | None = None,
) -> list[tuple[CloudEvent, Trigger | None]]:
    """One CloudEvent per transition event of a cycle, with the trigger it answers to. ``analysis``:
    the values that decided (default: those in the two statuses)."""
    decided = analysis if analysis is not None else analysis_of(before, after)
    out = []
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).isoformat().replace("+00:00", "Z")
    for i, e in enumerate(events):
        trigger = trigger_of(e, after)
        details = _details(r, after, e, trigger=trigger, links=links, analysis=decided)
        key = f"{r.spec.system}|{e.reason.value}|{now!r}|{i}|{e.message}"
        ev_id = hashlib.sha256(key.encode()).hexdigest()[:32]
        kind = _CDEVENT.get(e.reason) or (_ROLLED_BACK if e.reason.rolled_back or e.reason in _ABORTS else None)
        if kind is None:
            ev = CloudEvent(ev_id, f"dev.modship.rollout.{e.reason.value.lower()}.v1", r.spec.system, stamp, details)
        else:
            ev = CloudEvent(ev_id, kind, r.spec.system, stamp, _cdevent(ev_id, kind, stamp, details))
        out.append((ev, trigger))
    return out


def test_event(system: str, *, now: float, links: Links) -> CloudEvent:
    """What ``modship notify test`` sends."""
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).isoformat().replace("+00:00", "Z")
    data = {
        "system": system,
        "reason": "NotificationTest",
        "message": "a test notification from modship: this sink is reachable",
        "warning": False,
        "links": _links(system, (), links),
    }
    ev_id = hashlib.sha256(f"test|{system}|{now!r}".encode()).hexdigest()[:32]
    return CloudEvent(ev_id, "dev.modship.notification.test.v1", system, stamp, data)


def _details(
    r: Rollout,
    after: RolloutStatus,
    e: Event,
    *,
    trigger: Trigger | None,
    links: Links,
    analysis: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    return {
        "system": r.spec.system,
        "revision": after.canary or after.stable,
        "stable": after.stable,
        "canary": after.canary,
        "phase": after.phase.value,
        "step": after.step,
        "weight": after.traffic.weight,
        "reason": e.reason.value,
        "trigger": trigger.value if trigger else None,
        "message": e.message,
        "warning": e.warning,
        "modules": list(r.spec.modules),
        "analysis": analysis,
        "links": _links(r.spec.system, r.spec.modules, links),
    }


def _last(run: CheckRun) -> dict[str, Any]:
    m = run.recent[-1]
    return {
        "verdict": m.verdict.value,
        "value": m.value,
        "stable": m.stable,
        "samples": m.samples,
        "error": m.error,
        "successes": run.successes,
        "failures": run.failures,
        "inconclusive": run.inconclusive,
    }


def _links(system: str, modules: tuple[str, ...] | list[str], links: Links) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if links.dashboard:
        out["dashboard"] = f"{links.dashboard.rstrip('/')}/dashboard/#/systems/{system}"
    if links.mlflow:
        base = links.mlflow.rstrip("/")
        out["mlflow"] = {m: _model_link(base, m) for m in modules}
    return out


def _model_link(base: str, module: str) -> str:
    name, _, version = module.partition("@")
    return f"{base}/#/models/{name}/versions/{version}" if version.isdigit() else f"{base}/#/models/{name}"


def _cdevent(ev_id: str, kind: str, stamp: str, details: dict[str, Any]) -> dict[str, Any]:
    return {
        "context": {"version": CDEVENTS_VERSION, "id": ev_id, "source": SOURCE, "type": kind, "timestamp": stamp},
        "subject": {
            "id": f"{details['system']}/{details['revision']}",
            "source": SOURCE,
            "type": "service",
            "content": {
                "environment": {"id": "modship"},
                "artifactId": f"pkg:generic/{details['system']}@{details['revision']}",
            },
        },
        "customData": details,
        "customDataContentType": "application/json",
    }


# -- people-facing messages -------------------------------------------------------------------------


def message(kind: SinkType, ev: CloudEvent) -> dict[str, Any]:
    """The body to POST to a sink of this type."""
    match kind:
        case SinkType.WEBHOOK:
            return ev.to_dict()
        case SinkType.SLACK:
            return _slack(ev)
        case SinkType.TEAMS:
            return _teams(ev)


def _title(d: dict[str, Any]) -> str:
    mark = "⚠️ " if d.get("warning") else ""
    return f"{mark}{d['system']}: {d['reason']}"


def _facts(d: dict[str, Any]) -> list[tuple[str, str]]:
    facts = [("Revision", str(d.get("revision") or "-")), ("Phase", str(d.get("phase") or "-"))]
    if d.get("canary"):
        facts.append(("Canary weight", f"{d.get('weight', 0):g} % at step {d.get('step')}"))
    if d.get("modules"):
        facts.append(("Modules changed", ", ".join(d["modules"])))
    for name, a in (d.get("analysis") or {}).items():
        value = "no data" if a["value"] is None else f"{a['value']:.4g}"
        vs = f" (stable {a['stable']:.4g})" if a.get("stable") is not None else ""
        facts.append((f"Check {name}", f"{a['verdict']}: {value}{vs}, {a['samples']} samples"))
    return facts


def _slack(ev: CloudEvent) -> dict[str, Any]:
    d = ev.details
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _title(d)[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": d.get("message", "")}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in _facts(d)][:10]},
    ]
    links = _link_list(d)
    if links:
        text = " · ".join(f"<{url}|{label}>" for label, url in links)
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": text}]})
    return {"text": f"{_title(d)}: {d.get('message', '')}", "blocks": blocks}


def _teams(ev: CloudEvent) -> dict[str, Any]:
    d = ev.details
    return {
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": _title(d),
        "themeColor": "D70000" if d.get("warning") else "2EB886",
        "title": _title(d),
        "text": d.get("message", ""),
        "sections": [{"facts": [{"name": k, "value": v} for k, v in _facts(d)]}],
        "potentialAction": [
            {"@type": "OpenUri", "name": label, "targets": [{"os": "default", "uri": url}]}
            for label, url in _link_list(d)
        ],
    }


def _link_list(d: dict[str, Any]) -> list[tuple[str, str]]:
    links = d.get("links") or {}
    out = [("Dashboard", links["dashboard"])] if links.get("dashboard") else []
    out += [(f"MLflow {m}", url) for m, url in (links.get("mlflow") or {}).items()]
    return out
