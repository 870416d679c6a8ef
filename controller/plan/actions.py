"""Actions: what a decision asks the runtime to do, as frozen data. ``apply.execute`` performs
them once per cycle; every action is idempotent, so replaying a decision is harmless."""

from __future__ import annotations

from dataclasses import dataclass

from controller.plan.reasons import Reason


@dataclass(frozen=True, slots=True)
class EnsureRevision:
    """Have this revision running and health-checked (processes locally, a Deployment on k8s)."""

    revision: str
    role: str  # stable | canary | previous


@dataclass(frozen=True, slots=True)
class StopRevision:
    revision: str


@dataclass(frozen=True, slots=True)
class SetTraffic:
    stable: str
    canary: str | None
    weight: float
    header_route: tuple[str, str | None] | None = None
    mirror: float = 0.0
    fallback: bool = True
    sticky_header: str | None = None
    sticky_cookie: str | None = None


@dataclass(frozen=True, slots=True)
class SetFlags:
    """Feature flags for one revision, from setFlag steps (``{name: (enabled, percent)}``)."""

    revision: str
    flags: tuple[tuple[str, bool, float], ...]


@dataclass(frozen=True, slots=True)
class SetAliases:
    """Move the registry's @stable / @canary aliases to the modules of these revisions."""

    stable: str
    canary: str | None


@dataclass(frozen=True, slots=True)
class Event:
    """A transition worth telling people about (timeline, history, Kubernetes Events)."""

    reason: Reason
    message: str
    warning: bool = False


@dataclass(frozen=True, slots=True)
class CallGate:
    """Tell a post-rollout gate how the rollout ended, after the status is saved (its answer is
    logged, never acted on)."""

    gate: str
    payload: tuple[tuple[str, object], ...]


Action = EnsureRevision | StopRevision | SetTraffic | SetFlags | SetAliases | Event | CallGate
