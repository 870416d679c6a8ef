"""The persisted rollout status: phases, verdicts and only what cannot be recomputed.

``for_storage`` / ``from_storage`` convert explicitly at the boundary (a JSON state file locally,
the CR's status subresource on Kubernetes), so a restarted controller continues where it was.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from controller.plan.reasons import Reason, Waiting


class Phase(enum.StrEnum):
    IDLE = "Idle"  # only stable serves; nothing in flight
    PROGRESSING = "Progressing"  # a canary is moving through its steps
    PAUSED = "Paused"  # waiting: a pause step, a user pause, or an inconclusive analysis
    PROMOTED = "Promoted"  # the canary became stable (the previous one stays warm for a while)
    ABORTED = "Aborted"  # the canary was stopped; 100 % stable


class Verdict(enum.StrEnum):
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"
    RUNNING = "Running"  # not enough measurements yet (checks and analyses only)


@dataclass(frozen=True, slots=True)
class Measurement:
    at: float
    verdict: Verdict
    value: float | None = None
    stable: float | None = None
    samples: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CheckRun:
    """Counters of one check in the current analysis, and its latest measurements (for display)."""

    successes: int = 0
    failures: int = 0
    inconclusive: int = 0
    errors_in_row: int = 0
    last_at: float | None = None
    recent: tuple[Measurement, ...] = ()

    RECENT = 30  # enough to draw a step's analysis over time (and small in a CR's status)

    def record(self, m: Measurement) -> CheckRun:
        recent = (*self.recent, m)[-self.RECENT :]
        match m.verdict:
            case Verdict.SUCCESSFUL:
                return replace(self, successes=self.successes + 1, errors_in_row=0, last_at=m.at, recent=recent)
            case Verdict.FAILED:
                return replace(self, failures=self.failures + 1, errors_in_row=0, last_at=m.at, recent=recent)
            case Verdict.INCONCLUSIVE:
                return replace(self, inconclusive=self.inconclusive + 1, errors_in_row=0, last_at=m.at, recent=recent)
            case Verdict.ERROR:
                return replace(self, errors_in_row=self.errors_in_row + 1, last_at=m.at, recent=recent)
            case Verdict.RUNNING:  # warming up: not counted, but shown and rescheduled
                return replace(self, last_at=m.at, recent=recent)


@dataclass(frozen=True, slots=True)
class Traffic:
    """How traffic splits. ``weight`` is the canary's percentage."""

    weight: float = 0.0
    header_route: tuple[str, str | None] | None = None
    mirror: float = 0.0


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    revision: str
    outcome: str  # Promoted | Aborted | RolledBack | Initial
    at: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RolloutStatus:
    phase: Phase = Phase.IDLE
    stable: str | None = None
    canary: str | None = None
    previous_stable: str | None = None  # kept warm until promoted_at + rollbackWindow
    step: int = 0
    step_started: float | None = None
    started: float | None = None
    background_started: float | None = None
    promoted_at: float | None = None
    traffic: Traffic = Traffic()
    flags: dict[str, tuple[bool, float]] = field(default_factory=dict)  # setFlag steps, for the canary
    step_analysis: dict[str, CheckRun] = field(default_factory=dict)
    background: dict[str, CheckRun] = field(default_factory=dict)
    spec_hash: str = ""
    handled_controls: float = 0.0  # time of the last control (pause/resume/abort...) consumed
    reason: Reason = Reason.NONE
    message: str = ""
    history: tuple[HistoryEntry, ...] = ()
    waiting: Waiting | None = None  # what a rollout in flight waits for; None: it moves on its own
    gates_passed: tuple[str, ...] = ()  # one-time gates (confirm-rollout, pre-rollout) passed this rollout
    gate_failures: dict[str, int] = field(default_factory=dict)  # pre-rollout failures this rollout
    # each check's run at its latest measurement in this rollout (that alone), kept after its step
    # ends: the values that decided, which notifications report (also after a restart)
    decided: dict[str, CheckRun] = field(default_factory=dict)

    HISTORY = 20

    @property
    def in_flight(self) -> bool:
        """A canary is being rolled out (progressing or paused): the one definition everyone uses."""
        return self.canary is not None and self.phase in (Phase.PROGRESSING, Phase.PAUSED)

    def for_storage(self) -> dict[str, Any]:
        d = asdict(self)
        d["phase"] = self.phase.value
        d["reason"] = self.reason.value
        d["waiting"] = self.waiting.value if self.waiting is not None else None
        for key in ("step_analysis", "background", "decided"):
            for run in d[key].values():
                for m in run["recent"]:
                    m["verdict"] = m["verdict"].value if isinstance(m["verdict"], Verdict) else m["verdict"]
        d["flags"] = {k: list(v) for k, v in self.flags.items()}
        return d

    @classmethod
    def from_storage(cls, d: dict[str, Any]) -> RolloutStatus:
        def run(x: dict[str, Any]) -> CheckRun:
            recent = tuple(Measurement(**{**m, "verdict": Verdict(m["verdict"])}) for m in x.get("recent", []))
            return CheckRun(**{**x, "recent": recent})

        t = d.get("traffic") or {}
        hr = t.get("header_route")
        return cls(
            phase=Phase(d.get("phase", "Idle")),
            stable=d.get("stable"),
            canary=d.get("canary"),
            previous_stable=d.get("previous_stable"),
            step=int(d.get("step", 0)),
            step_started=d.get("step_started"),
            started=d.get("started"),
            background_started=d.get("background_started"),
            promoted_at=d.get("promoted_at"),
            traffic=Traffic(float(t.get("weight", 0.0)), (hr[0], hr[1]) if hr else None, float(t.get("mirror", 0.0))),
            flags={k: (bool(v[0]), float(v[1])) for k, v in (d.get("flags") or {}).items()},
            step_analysis={k: run(v) for k, v in (d.get("step_analysis") or {}).items()},
            background={k: run(v) for k, v in (d.get("background") or {}).items()},
            spec_hash=d.get("spec_hash", ""),
            handled_controls=float(d.get("handled_controls", 0.0)),
            reason=Reason.parse(d.get("reason", "")),
            message=d.get("message", ""),
            history=tuple(HistoryEntry(**h) for h in d.get("history", [])),
            waiting=Waiting.parse(d.get("waiting")) if "waiting" in d else _waiting_of_old(d),
            gates_passed=tuple(str(g) for g in d.get("gates_passed") or ()),
            gate_failures={str(k): int(v) for k, v in (d.get("gate_failures") or {}).items()},
            decided={k: run(v) for k, v in (d.get("decided") or {}).items()},
        )

    def remember(self, entry: HistoryEntry) -> tuple[HistoryEntry, ...]:
        return (*self.history, entry)[-self.HISTORY :]


def _waiting_of_old(d: dict[str, Any]) -> Waiting | None:
    """A status written before ``waiting`` existed: what its reason meant (a paused rollout)."""
    if d.get("phase") != Phase.PAUSED.value:
        return None
    old = {"PausedByUser": Waiting.USER, "AnalysisInconclusive": Waiting.REVIEW, "PauseStep": Waiting.PAUSE_STEP}
    return old.get(str(d.get("reason", "")))
