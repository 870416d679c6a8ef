"""The documents the API serves: ``status``, ``summary`` and ``history`` (``-o json`` schemas)."""

from __future__ import annotations

from typing import Any

from controller.apply.local_controller import LocalController
from controller.plan import analysis
from controller.plan.status import CheckRun, Phase, RolloutStatus
from controller.spec.rollout import CanaryStep, Rollout

TELEMETRY_WINDOW = 30.0


def summary(c: LocalController, name: str) -> dict[str, Any]:
    s = c.store.status(name)
    r = c.store.rollout(name)
    return {
        "system": name,
        "phase": s.phase.value,
        "stable": s.stable,
        "canary": s.canary,
        "weight": s.traffic.weight,
        "target": r.spec.revision,
        "reason": s.reason,
    }


def _step(i: int, st: CanaryStep, s: RolloutStatus) -> dict[str, Any]:
    kind = st.kind
    value: Any = st.value
    value = value if isinstance(value, int | float) or value is None else value.dump()
    in_flight = s.canary is not None and s.phase in (Phase.PROGRESSING, Phase.PAUSED)
    state = "pending"
    if s.phase is Phase.PROMOTED or (in_flight and i < s.step):
        state = "done"
    elif in_flight and i == s.step:
        state = "current"
    return {"index": i, "kind": kind, "value": value, "state": state}


def _run(r: Rollout, name: str, run: CheckRun, *, background: bool) -> dict[str, Any]:
    check = r.check(name)
    count = check.count if background else analysis.step_count(check)
    return {
        "verdict": analysis.check_verdict(check, run, count=count).value,
        "successes": run.successes,
        "failures": run.failures,
        "inconclusive": run.inconclusive,
        "errorsInRow": run.errors_in_row,
        "count": count,
        "threshold": check.threshold.dump(),
        "recent": [
            {
                "at": m.at,
                "verdict": m.verdict.value,
                "value": m.value,
                "stable": m.stable,
                "samples": m.samples,
                "error": m.error,
            }
            for m in run.recent
        ],
    }


def _revision(c: LocalController, name: str, rev: str | None) -> dict[str, Any] | None:
    if rev is None:
        return None
    rec = next((x for x in c.store.revisions(name) if x.revision == rev), None)
    return {"revision": rev, "number": rec.number if rec else None, "modules": rec.modules if rec else []}


def status(c: LocalController, name: str) -> dict[str, Any]:
    r = c.store.rollout(name)
    s = c.store.status(name)
    controls = c.store.controls(name)
    in_flight = s.canary is not None and s.phase in (Phase.PROGRESSING, Phase.PAUSED)
    m = c.systems.get(name)
    tele = m.runtime.telemetry(TELEMETRY_WINDOW) if m is not None else None
    traffic: dict[str, Any] = {}
    for rev, t in ((tele or {}).get("revisions") or {}).items():
        req = t.get("requests", 0)
        traffic[rev] = {
            "role": t.get("role"),
            "requestRate": round(req / TELEMETRY_WINDOW, 3),
            "errorRate": round(t.get("errors", 0) / req, 4) if req else None,
            "fallbacks": t.get("fallbacks", 0),
            "mirrored": (t.get("mirror") or {}).get("requests", 0),
        }
    port = (c.store.dir(name) / "port").read_text().strip() if (c.store.dir(name) / "port").exists() else None
    doc: dict[str, Any] = {
        "system": name,
        "phase": s.phase.value,
        "reason": s.reason,
        "message": s.message,
        "target": r.spec.revision,
        "stable": _revision(c, name, s.stable),
        "canary": _revision(c, name, s.canary) if in_flight or s.phase is Phase.ABORTED else None,
        "previousStable": s.previous_stable,
        "rollbackWindowEndsAt": s.promoted_at + r.spec.policies.rollback_window
        if s.previous_stable and s.promoted_at
        else None,
        "step": s.step,
        "steps": [_step(i, st, s) for i, st in enumerate(r.steps)],
        "weight": s.traffic.weight if in_flight else 0.0,
        "headerRoute": list(s.traffic.header_route) if in_flight and s.traffic.header_route else None,
        "mirror": s.traffic.mirror if in_flight else 0.0,
        "flags": {k: {"enabled": v[0], "percent": v[1]} for k, v in s.flags.items()},
        "toggles": c.store.toggles(name),
        "paused": controls.paused,
        "analysis": {
            "step": {n: _run(r, n, run, background=False) for n, run in s.step_analysis.items()},
            "background": {n: _run(r, n, run, background=True) for n, run in s.background.items()},
        },
        "traffic": traffic,
        "router": f"http://127.0.0.1:{port}" if port else None,
        "managed": m is not None,
        "processes": m.runtime.report() if m is not None else None,  # units, memory, crashes
        "history": [{"revision": h.revision, "outcome": h.outcome, "at": h.at, "reason": h.reason} for h in s.history],
    }
    doc["drift"] = drift(doc)
    return doc


def drift(d: dict[str, Any]) -> list[str]:
    """What runs versus what the spec asks for, in words; [] when they agree (or a rollout is on its way)."""
    target, stable = d.get("target"), (d.get("stable") or {}).get("revision")
    if target and stable and target != stable and d["phase"] in ("Aborted", "Idle", "Promoted"):
        why = f" ({d['reason']})" if d.get("reason") else ""
        return [f"the spec asks for {target} but {stable} serves after an automatic rollback{why}: "
                "promote again, retry, or set the spec (or Git) back to what runs"]  # fmt: skip
    return []


def history(c: LocalController, name: str) -> list[dict[str, Any]]:
    s = c.store.status(name)
    outcomes: dict[str, list[dict[str, Any]]] = {}
    for h in s.history:
        outcomes.setdefault(h.revision, []).append({"outcome": h.outcome, "at": h.at, "reason": h.reason})
    out = []
    for rec in c.store.revisions(name):
        role = "stable" if rec.revision == s.stable else "canary" if rec.revision == s.canary else None
        out.append(
            {
                "number": rec.number,
                "revision": rec.revision,
                "created": rec.created,
                "modules": rec.modules,
                "changed": rec.changed,
                "overrides": rec.overrides,
                "role": role,
                "outcomes": outcomes.get(rec.revision, []),
            }
        )
    return out
