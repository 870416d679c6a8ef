"""What the controller observes, as plain values: metric samples and runtime health.

Providers (``adapters.builtin_metrics``, ``adapters.prometheus``) produce these; the pure
analysis and the rollout state machine consume them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controller.plan.governance import Release


@dataclass(frozen=True, slots=True)
class QueryContext:
    """Everything a provider needs to measure one check for one rollout."""

    system: str
    revision: str  # the canary revision
    stable_revision: str
    window_s: float
    namespace: str | None = None
    reference: dict[str, Any] | None = None  # reference input statistics (input drift), if known
    extra: dict[str, str] = field(default_factory=dict)  # more template variables


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement of a check.

    ``value`` is the canary's figure (None: no data); ``stable`` the same figure for stable, used by
    thresholds relative to stable; ``samples`` the number of requests behind it (``minSamples``);
    ``error`` a provider failure (an ``Error`` verdict, never a pass).
    """

    value: float | None
    stable: float | None = None
    samples: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Health:
    """Whether each revision's processes/pods are up and ready."""

    stable_ready: bool
    canary_ready: bool
    canary_failed: str | None = None  # a reason when the canary cannot start (crash loop, image)


@dataclass(frozen=True, slots=True)
class Controls:
    """Commands from people, as the time each was last given (None: never). A command is new when
    its time is after the status' ``handled_controls``; ``paused`` is a standing request."""

    paused: bool = False
    abort: float | None = None
    resume: float | None = None
    promote_full: float | None = None
    retry: float | None = None

    def times(self) -> tuple[float, ...]:
        return tuple(t for t in (self.abort, self.resume, self.promote_full, self.retry) if t is not None)

    def latest(self) -> float:
        return max(self.times(), default=0.0)


@dataclass(frozen=True, slots=True)
class GateAnswer:
    """What a webhook gate answered, asked at ``step``: ``ok`` for 2xx; ``message`` says what came
    back (``HTTP 409``, ``no answer within 10s``) and never holds the gate's URL."""

    ok: bool
    step: int
    message: str = ""


@dataclass(frozen=True, slots=True)
class Observations:
    health: Health
    samples: dict[str, Sample] = field(default_factory=dict)
    controls: Controls = Controls()
    gates: dict[str, GateAnswer] = field(default_factory=dict)  # by gate name, those asked this cycle
    release: Release | None = None  # governance of the canary in flight (None: no policy applies)
    held: bool = False  # the spec's new target is refused by the policy: what runs carries on, unrestarted
