"""The control plane's requests and answers: what people (CLI, dashboard, notifications) ask of a
rollout and what they get back, the same for the local controller and for Kubernetes.

The wire form is camelCase JSON (the ``-o json`` documents and the local API's bodies). ``request``
turns a body into a request model, a bad field becoming one ``SpecError`` that names it.
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from controller.errors import SpecError


class Command(enum.StrEnum):
    """A one-word command on a rollout."""

    PAUSE = "pause"  # stop where it is (traffic stays); a standing request
    RESUME = "resume"  # release a pause (a user pause, a pause step, an inconclusive analysis)
    ABORT = "abort"  # 100 % to stable, the canary stopped
    RETRY = "retry"  # start an aborted canary again from step 0
    ROLLBACK = "rollback"  # abort a canary in flight, or go back to the previous (warm) stable
    PROMOTE_FULL = "promote-full"  # skip the remaining steps: promote the canary now


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", alias_generator=to_camel, populate_by_name=True)

    def wire(self) -> dict[str, Any]:
        """The camelCase JSON form; optional fields never set are left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


M = TypeVar("M", bound=Model)


def request(model: type[M], body: dict[str, Any]) -> M:
    """Parse a request body; the first problem becomes a SpecError naming its field."""
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise SpecError(msg, field=field) from None


# -- who asks --------------------------------------------------------------------------------------


class Actor(Model):
    """Who made a request that changes something, and why. The backend sets ``user`` from the
    credential it checked (the local API's token, the Kubernetes user), never from the request;
    ``reason`` is the person's own words (CLI ``--reason``; the HTTP body's ``"reason"``)."""

    user: str
    reason: str | None = None

    @field_validator("reason", mode="before")
    @classmethod
    def _reason(cls, v: Any) -> Any:
        if v is None:
            return None
        if not isinstance(v, str) or len(v) > MAX_REASON or any(c in v for c in "\r\n\x00"):
            raise ValueError(f"reason must be one line of text, at most {MAX_REASON} characters")
        return v.strip() or None


MAX_REASON = 500


# -- requests --------------------------------------------------------------------------------------


class PromoteRequest(Model):
    """Roll out new module versions (grouped, one revision), a whole System document, or on
    Kubernetes a built ``revision``; ``full`` promotes to 100 % as soon as the canary is ready."""

    modules: list[str] = Field(default_factory=list)
    system: dict[str, Any] | None = None
    revision: str | None = None
    full: bool = False
    force: bool = False
    break_glass: bool = False  # override the policy's change windows and soak (needs a reason; audited)

    @field_validator("modules", mode="before")
    @classmethod
    def _modules(cls, v: Any) -> Any:
        if v is None:
            return []
        if not isinstance(v, list) or not all(isinstance(m, str) for m in v):
            raise ValueError("modules must be a list of NAME@VERSION")
        return v

    @property
    def only_full(self) -> bool:
        """``promote --full`` of the canary in flight: no new revision."""
        return self.full and not self.modules and self.system is None and self.revision is None


class UndoRequest(Model):
    to_revision: int | None = None

    @field_validator("to_revision", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise ValueError("toRevision must be a revision number")
        return v


class ToggleRequest(Model):
    flag: str
    enabled: bool
    percent: float = 100.0

    @field_validator("flag", mode="before")
    @classmethod
    def _flag(cls, v: Any) -> Any:
        if not isinstance(v, str) or not v:
            raise ValueError("give the flag's name")
        return v

    @field_validator("enabled", mode="before")
    @classmethod
    def _enabled(cls, v: Any) -> Any:
        if not isinstance(v, bool):
            raise ValueError("enabled must be true/false and percent 0-100")
        return v

    @field_validator("percent", mode="before")
    @classmethod
    def _percent(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 100:
            raise ValueError("enabled must be true/false and percent 0-100")
        return v


class ApproveRequest(Model):
    """Approve (or reject) the change awaiting approval; ``revision`` guards against deciding on
    another change than the one looked at."""

    revision: str | None = None
    approve: bool = True


class DeployRequest(Model):
    """Local runtime only: register a system; its first revision becomes stable at once."""

    system: dict[str, Any]
    rollout: dict[str, Any] | None = None
    port: int

    @field_validator("system", mode="before")
    @classmethod
    def _system(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            raise ValueError("give the System document")
        return v

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, v: Any) -> Any:
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 65535:
            raise ValueError(f"port must be 1-65535, got {v!r}")
        return v


# -- answers ---------------------------------------------------------------------------------------


class PromoteResult(Model):
    system: str
    promote_full: bool | None = None  # set (True) when only the canary in flight was promoted
    revision: str | None = None
    number: int | None = None
    changes: list[str] = Field(default_factory=list)
    overrides: list[str] = Field(default_factory=list)
    rollback: bool = False  # the revision is the previous stable, still warm: back to it at once, no steps


class CommandResult(Model):
    system: str
    command: str | None = None
    message: str | None = None


class UndoResult(Model):
    system: str
    revision: str
    number: int | None


class ToggleResult(Model):
    system: str
    flag: str
    enabled: bool
    percent: float


class ApproveResult(Model):
    system: str
    revision: str
    approve: bool
    missing: list[str]  # what is still missing after this decision ([]: nothing)


class DeployResult(Model):
    system: str
    revision: str
    router: str


class Summary(Model):
    system: str
    phase: str
    stable: str | None
    canary: str | None
    weight: float
    target: str | None
    reason: str


class RevisionRef(Model):
    revision: str
    number: int | None
    modules: list[str]


class StepState(Model):
    index: int
    kind: str
    value: Any
    state: str  # done | current | pending


class Measured(Model):
    """One measurement of a check, as ``plan.analysis`` judged it."""

    at: float  # unix seconds
    verdict: str  # Successful | Failed | Inconclusive | Error | Running
    value: float | None  # the canary's figure (None: no data)
    stable: float | None  # stable's figure over the same window, when the check compares with it
    samples: int  # requests (or series points) behind the figure
    error: str | None  # why the provider gave no figure (verdict Error)
    compared: float | None = None  # what was held against the threshold: value, or value - stable


class CheckState(Model):
    """One check of the current (or last) analysis: its counters, its definition and its latest
    measurements, oldest first (up to ``plan.status.CheckRun.RECENT``): enough to draw the check
    over time against its threshold, canary and stable side by side."""

    verdict: str
    successes: int
    failures: int
    inconclusive: int
    errors_in_row: int
    count: int | None  # measurements it needs to succeed (None: until the step ends)
    threshold: dict[str, Any]  # {"min"?, "max"?, "relativeTo"?: "stable"}: bounds on ``compared``
    recent: list[Measured]
    provider: str | None = None  # builtin | prometheus
    measures: str | None = None  # the builtin metric's name, or the PromQL query (template)
    interval: float | None = None  # seconds between measurements
    window: float | None = None  # seconds of traffic each measurement covers
    limits: dict[str, int] | None = None  # failureLimit, inconclusiveLimit, consecutiveErrorLimit, minSamples


class AbortCause(Model):
    """Why the rollout aborted, in one sentence, with the measurement that decided it."""

    reason: str  # the status' reason: AnalysisFailed, MetricsUnavailable, AbortedByUser, CanaryFailed...
    sentence: str  # for people: "Aborted because check error-rate (analysis) failed: ...; the last: ..."
    check: str | None = None  # the deciding check (analysis and metrics aborts)
    background: bool = False  # True when it ran in the background analysis
    measurement: Measured | None = None  # its last measurement with the deciding verdict
    threshold: dict[str, Any] | None = None  # that check's threshold
    actor: Actor | None = None  # AbortedByUser: who asked, and why (when the backend records it)


class Analysis(Model):
    step: dict[str, CheckState]
    background: dict[str, CheckState]


class Outcome(Model):
    revision: str
    outcome: str
    at: float
    reason: str


class TrafficFigures(Model):
    role: str | None
    request_rate: float
    error_rate: float | None
    fallbacks: int
    mirrored: int
    # the ML signals over the same window, where the backend sees answers (the local router):
    labels: dict[str, int] | None = None  # predicted labels and their counts
    confidence: float | None = None  # mean confidence of the predictions
    compared: int | None = None  # mirrored requests whose answer was compared with stable's
    disagreed: int | None = None  # ... and whose labels differed


class ApprovalRow(Model):
    user: str
    approve: bool
    at: float
    reason: str | None = None


class Governance(Model):
    """The change in flight as the policy sees it: who made it and why, and the decisions on it."""

    revision: str
    author: str
    reason: str | None = None
    break_glass: bool = False
    approvals_required: int = 0
    decisions: list[ApprovalRow] = Field(default_factory=list)
    missing: list[str] = Field(default_factory=list)


class StatusDocument(Model):
    """``status -o json``: the rollout as people see it."""

    system: str
    namespace: str | None = None  # Kubernetes only
    phase: str
    reason: str
    message: str
    waiting: str | None = None  # what a rollout in flight waits for (Gate, Metrics, Review...), if anything
    target: str | None
    stable: RevisionRef | None
    canary: RevisionRef | None
    previous_stable: str | None
    rollback_window_ends_at: float | None
    step: int
    steps: list[StepState]
    weight: float
    header_route: list[str | None] | None
    mirror: float
    flags: dict[str, dict[str, Any]]
    toggles: dict[str, dict[str, Any]]
    paused: bool
    analysis: Analysis
    traffic: dict[str, TrafficFigures]
    router: str | None
    managed: bool
    processes: dict[str, Any] | None = None  # the local runtime: units, memory, crashes
    conditions: list[dict[str, Any]] | None = None  # Kubernetes only
    history: list[Outcome]
    drift: list[str]
    aborted: AbortCause | None = None  # set while the phase is Aborted: why
    governance: Governance | None = None  # the change's author, reason, break-glass and approvals


class HistoryOutcome(Model):
    outcome: str
    at: float
    reason: str
    actor: Actor | None = None  # the person whose request caused it (abort, rollback, undo, promote --full)


class HistoryRow(Model):
    number: int
    revision: str
    created: float | None
    modules: list[str]
    changed: list[str]
    overrides: list[str]
    role: str | None
    outcomes: list[HistoryOutcome]
    actor: Actor | None = None  # who asked for this revision (deploy, promote, undo) and why


class EventRow(Model):
    at: float
    reason: str
    message: str
    warning: bool
    actor: Actor | None = None  # set on the events that record a person's request
