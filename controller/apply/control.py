"""What the control plane decides, once for every backend: the preconditions of each request and
the documents people read (status, history). Pure functions of the rollout spec and status plus
the few facts a backend adds (revision numbers, toggles, live traffic); the adapters of the
``Control`` port (local controller, Kubernetes) only read those facts and write the outcome.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.errors import Conflict
from controller.plan import analysis, explain
from controller.plan.reasons import Reason
from controller.plan.status import CheckRun, HistoryEntry, Measurement, Phase, RolloutStatus
from controller.spec import control
from controller.spec.rollout import CanaryStep, Check, Rollout

GO_BACK_OUTCOMES = ("Promoted", "Initial", "RolledBack")  # revisions that served as stable


# -- preconditions ---------------------------------------------------------------------------------


def in_progress(s: RolloutStatus, target: str | None) -> str | None:
    """The revision whose rollout is in progress: a canary in flight, or a target accepted but
    not started yet. None when a new rollout may start."""
    if s.in_flight:
        return s.canary
    if target is not None and target not in (s.stable, s.canary):
        return target
    return None


def ensure_no_rollout(name: str, s: RolloutStatus, target: str | None, *, revision: str | None = None) -> None:
    """A new revision may roll out only when none is in progress (the same one again is no change)."""
    busy = in_progress(s, target)
    if busy is not None and busy != revision:
        raise Conflict(f"{name}: a rollout of {busy} is in progress (abort it or wait)")


def ensure_abortable(name: str, s: RolloutStatus, target: str | None) -> None:
    if in_progress(s, target) is None:
        raise Conflict(f"{name}: no rollout in progress: nothing to abort")


def ensure_stable(name: str, s: RolloutStatus) -> None:
    if s.stable is None:
        raise Conflict(f"{name}: nothing is stable yet; is the controller running (modship up)?")


def ensure_new(name: str, s: RolloutStatus, revision: str) -> None:
    if revision == s.stable and not s.in_flight:
        raise Conflict(f"{name}: {revision} is already stable: nothing to promote")


def ensure_can_go_back(name: str, s: RolloutStatus, target: str | None, revision: str, number: int | None) -> None:
    """Going back changes something unless the revision is stable and also what the spec asks for
    (after an automatic rollback the spec still names the aborted canary: undo sets it back)."""
    if revision == s.stable and target == s.stable:
        raise Conflict(f"{name}: revision {number} ({revision}) is already stable")


def previous_revision(name: str, s: RolloutStatus) -> str:
    """Where ``undo`` goes by default: the previous stable (warm), else the last one before it."""
    older = [h.revision for h in s.history if h.outcome in GO_BACK_OUTCOMES and h.revision != s.stable]
    prev = s.previous_stable or (older[-1] if older else None)
    if prev is None:
        raise Conflict(f"{name}: no earlier revision to go back to")
    return prev


def numbers(s: RolloutStatus, target: str | None) -> dict[str, int]:
    """Revision numbers when the backend keeps no record of its own: in order of first appearance
    in the status history, then stable, canary and target."""
    out: dict[str, int] = {}
    for rev in [h.revision for h in s.history] + [x for x in (s.stable, s.canary, target) if x]:
        if rev and rev not in out:
            out[rev] = len(out) + 1
    return out


def aborting(s: RolloutStatus) -> str:
    return f"aborting canary {s.canary}: 100 % to stable {s.stable}"


# -- the status document ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    """What a backend knows beyond the spec and the status."""

    target: str | None
    revisions: Mapping[str, control.RevisionRef]  # by revision
    toggles: dict[str, dict[str, Any]]
    paused: bool
    managed: bool
    traffic: dict[str, control.TrafficFigures] = field(default_factory=dict)
    router: str | None = None
    processes: dict[str, Any] | None = None
    namespace: str | None = None
    conditions: list[dict[str, Any]] | None = None
    shown: tuple[str, str, str] | None = None  # phase, reason, message as the backend reports them
    aborted_by: control.Actor | None = None  # who asked for the abort in effect (when recorded)


def status_document(name: str, r: Rollout | None, s: RolloutStatus, facts: Facts) -> control.StatusDocument:
    in_flight = s.in_flight
    phase, reason, message = facts.shown or (s.phase.value, s.reason.value, s.message)
    window = r.spec.policies.rollback_window if r is not None else None
    extra: dict[str, Any] = {}
    if facts.namespace is not None:
        extra["namespace"] = facts.namespace
    if facts.conditions is not None:
        extra["conditions"] = facts.conditions
    cause = explain.why_aborted(r, s)
    if cause is not None:
        extra["aborted"] = _cause(r, cause, facts.aborted_by)
    doc = control.StatusDocument(
        system=name,
        phase=phase,
        reason=reason,
        message=message,
        target=facts.target,
        stable=_ref(facts, s.stable),
        canary=_ref(facts, s.canary) if in_flight or s.phase is Phase.ABORTED else None,
        previous_stable=s.previous_stable,
        rollback_window_ends_at=s.promoted_at + window
        if s.previous_stable and s.promoted_at and window is not None
        else None,
        step=s.step,
        steps=[_step(i, st, s) for i, st in enumerate(r.steps)] if r is not None else [],
        weight=s.traffic.weight if in_flight else 0.0,
        header_route=list(s.traffic.header_route) if in_flight and s.traffic.header_route else None,
        mirror=s.traffic.mirror if in_flight else 0.0,
        flags={k: {"enabled": v[0], "percent": v[1]} for k, v in s.flags.items()},
        toggles=facts.toggles,
        paused=facts.paused,
        analysis=_analysis(r, s),
        traffic=facts.traffic,
        router=facts.router,
        managed=facts.managed,
        processes=facts.processes,
        history=[control.Outcome(revision=h.revision, outcome=h.outcome, at=h.at, reason=h.reason) for h in s.history],
        drift=[],
        **extra,
    )
    return doc.model_copy(update={"drift": drift(doc)})


def _ref(facts: Facts, rev: str | None) -> control.RevisionRef | None:
    if rev is None:
        return None
    return facts.revisions.get(rev) or control.RevisionRef(revision=rev, number=None, modules=[])


def _step(i: int, st: CanaryStep, s: RolloutStatus) -> control.StepState:
    value: Any = st.value
    value = value if isinstance(value, int | float) or value is None else value.dump()
    state = "pending"
    if s.phase is Phase.PROMOTED or (s.in_flight and i < s.step):
        state = "done"
    elif s.in_flight and i == s.step:
        state = "current"
    return control.StepState(index=i, kind=st.kind, value=value, state=state)


def _analysis(r: Rollout | None, s: RolloutStatus) -> control.Analysis:
    if r is None:
        return control.Analysis(step={}, background={})
    known = {c.name for c in r.spec.analysis.checks}
    return control.Analysis(
        step={n: _run(r, n, run, background=False) for n, run in s.step_analysis.items() if n in known},
        background={n: _run(r, n, run, background=True) for n, run in s.background.items() if n in known},
    )


def _run(r: Rollout, name: str, run: CheckRun, *, background: bool) -> control.CheckState:
    check = r.check(name)
    count = check.count if background else analysis.step_count(check)
    return control.CheckState(
        verdict=analysis.check_verdict(check, run, count=count).value,
        successes=run.successes,
        failures=run.failures,
        inconclusive=run.inconclusive,
        errors_in_row=run.errors_in_row,
        count=count,
        threshold=check.threshold.dump(),
        recent=[_measured(check, m) for m in run.recent],
        provider=check.provider.value,
        measures=check.metric.value if check.metric is not None else check.query,
        interval=check.interval,
        window=check.window,
        limits={
            "failureLimit": check.failure_limit,
            "inconclusiveLimit": check.inconclusive_limit,
            "consecutiveErrorLimit": check.consecutive_error_limit,
            "minSamples": check.min_samples,
        },
    )


def _measured(check: Check, m: Measurement) -> control.Measured:
    return control.Measured(
        at=m.at,
        verdict=m.verdict.value,
        value=m.value,
        stable=m.stable,
        samples=m.samples,
        error=m.error,
        compared=explain.compared(check, m),
    )


def _cause(r: Rollout | None, c: explain.Cause, actor: control.Actor | None) -> control.AbortCause:
    check = r.check(c.check) if r is not None and c.check is not None else None
    extra: dict[str, Any] = {}
    if check is not None:
        extra["check"], extra["background"], extra["threshold"] = check.name, c.background, check.threshold.dump()
        if c.measurement is not None:
            extra["measurement"] = _measured(check, c.measurement)
    sentence = c.sentence
    if c.reason is Reason.ABORTED_BY_USER and actor is not None:
        extra["actor"] = actor
        sentence = f"Aborted by {actor.user}" + (f": {actor.reason}." if actor.reason else ".")
    return control.AbortCause(reason=c.reason.value, sentence=sentence, **extra)


def drift(d: control.StatusDocument) -> list[str]:
    """What runs versus what the spec asks for, in words; [] when they agree (or a rollout is on its way)."""
    stable = d.stable.revision if d.stable else None
    if d.target and stable and d.target != stable and d.phase in ("Aborted", "Idle", "Promoted"):
        why = f" ({d.reason})" if d.reason else ""
        return [f"the spec asks for {d.target} but {stable} serves after an automatic rollback{why}: "
                "promote again, retry, or set the spec (or Git) back to what runs"]  # fmt: skip
    return []


# -- history ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Revision:
    """A revision as a backend records it (the local runtime keeps more than Kubernetes)."""

    number: int
    revision: str
    created: float | None
    modules: Sequence[str] = ()
    changed: Sequence[str] = ()
    overrides: Sequence[str] = ()


@dataclass(frozen=True)
class Request:
    """A person's accepted request as the backend recorded it (``AbortRequested``...)."""

    at: float
    what: str
    actor: control.Actor
    revision: str | None = None


# the requests that cause an outcome with this reason (the machine's own outcomes have none)
_CAUSED_BY = {
    "AbortedByUser": ("AbortRequested", "RollbackRequested"),
    "PromotedFull": ("PromoteFullRequested", "PromoteRequested"),
    "RolledBack": ("RollbackRequested", "UndoRequested"),
    "TargetReverted": ("UndoRequested", "PromoteRequested"),
}
_ASKS_FOR_REVISION = ("DeployRequested", "PromoteRequested", "UndoRequested")


def history(
    s: RolloutStatus, revisions: Sequence[Revision], requests: Sequence[Request] = ()
) -> list[control.HistoryRow]:
    """The revisions with their outcomes; with ``requests``, who asked for each revision and whose
    request caused each outcome (the latest fitting request before it)."""

    def asked(rev: str) -> control.Actor | None:
        return next((q.actor for q in reversed(requests) if q.what in _ASKS_FOR_REVISION and q.revision == rev), None)

    def caused(h: HistoryEntry, since: float) -> control.Actor | None:
        if h.outcome == "Initial":
            return asked(h.revision)
        kinds = _CAUSED_BY.get(h.reason, ())
        fits = [q for q in requests if q.what in kinds and since <= q.at <= h.at]
        return fits[-1].actor if fits else None

    since = {id(h): (s.history[i - 1].at if i else 0.0) for i, h in enumerate(s.history)}

    def outcomes(rev: str) -> list[control.HistoryOutcome]:
        return [_outcome(h, caused(h, since[id(h)])) for h in s.history if h.revision == rev]

    return [
        control.HistoryRow(
            number=rec.number,
            revision=rec.revision,
            created=rec.created,
            modules=list(rec.modules),
            changed=list(rec.changed),
            overrides=list(rec.overrides),
            role="stable"
            if rec.revision == s.stable
            else "canary"
            if rec.revision == s.canary and s.in_flight
            else None,
            outcomes=outcomes(rec.revision),
            **({"actor": a} if (a := asked(rec.revision)) else {}),
        )
        for rec in revisions
    ]


def _outcome(h: HistoryEntry, actor: control.Actor | None) -> control.HistoryOutcome:
    extra = {"actor": actor} if actor is not None else {}
    return control.HistoryOutcome(outcome=h.outcome, at=h.at, reason=h.reason, **extra)
