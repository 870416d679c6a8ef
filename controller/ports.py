"""The ports: small protocols the core talks to. One adapter module per backend implements each;
``adapters.memory`` implements every port in memory (real code, for unit tests and --dry-run).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from controller.compose.revision import Lock
from controller.plan import rollout as machine
from controller.plan.actions import Event, SetTraffic
from controller.plan.governance import Approval, Change
from controller.plan.observations import Controls, Health, QueryContext, Sample
from controller.plan.status import RolloutStatus
from controller.registry.bundle import Bundle
from controller.registry.versions import ModuleVersion
from controller.spec import control
from controller.spec.policy import Policy
from controller.spec.refs import ModuleRef
from controller.spec.rollout import Check, Gate, LoadTest, Rollout


class ModuleCatalog(Protocol):
    """Read side of the registry. Only complete, valid versions are ever returned."""

    def modules(self) -> list[str]:
        """Names of registered modules, sorted."""
        ...

    def versions(self, name: str) -> list[ModuleVersion]:
        """Valid versions of ``name``, ascending. Raises NotFound for an unknown module."""
        ...

    def resolve(self, ref: ModuleRef) -> ModuleVersion:
        """The version a ref names (a version, an alias, or the latest). Raises NotFound."""
        ...


class ModuleStore(Protocol):
    def register(self, bundle: Bundle) -> ModuleVersion:
        """Record a new version, all or nothing: on any failure no resolvable trace remains."""
        ...

    def fetch(self, version: ModuleVersion, dest: Path) -> Path:
        """Download the version's files into ``dest`` and verify their digests (IntegrityError)."""
        ...


class ModuleLabels(Protocol):
    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``name@alias`` at ``version`` (idempotent)."""
        ...

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias; a missing alias is not an error (idempotent)."""
        ...

    def deprecate(self, name: str, version: int, after: dt.date | None) -> None:
        """Set (or with None, clear) the date after which the version must not be deployed."""
        ...


class Registry(ModuleCatalog, ModuleStore, ModuleLabels, Protocol):
    """The module registry: MLflow's Model Registry, or memory."""


@dataclass(frozen=True)
class ModelInfo:
    """What a downloaded MLflow model folder says about itself."""

    path: Path
    signature: Any  # mlflow.models.ModelSignature | None
    example: Any  # the saved input example as JSON-able data (records, a tensor), or None
    run_id: str | None
    flavors: tuple[str, ...]


class ModelSource(Protocol):
    """Models a team already has (MLflow): the way in for ``module adopt``."""

    def download(self, uri: str, dest: Path) -> ModelInfo:
        """Copy the model at ``uri`` (models:/, runs:/, an artifact URI or a local folder) into the new
        folder ``dest`` and describe it. NotFound when it does not exist; SpecError when it is no model."""
        ...


class MetricsSource(Protocol):
    """A metrics provider for analysis: the router's built-in telemetry, or Prometheus."""

    def online(self) -> bool:
        """True when the provider answers (a down provider triggers the metricsDown policy)."""
        ...

    def sample(self, check: Check, ctx: QueryContext) -> Sample:
        """Measure ``check`` for the canary (and stable when relative). Never raises for a
        provider failure: returns ``Sample(value=None, error=...)`` instead."""
        ...


class Target(Protocol):
    """Where revisions run and traffic is split: local processes + router, or Kubernetes."""

    def ensure(self, revision: str, role: str) -> None:
        """Have ``revision`` running (idempotent; starting is asynchronous, see ``health``)."""
        ...

    def stop(self, revision: str) -> None:
        """Stop ``revision`` (idempotent; unknown revisions are ignored)."""
        ...

    def route(self, traffic: SetTraffic) -> None:
        """Split traffic as given (idempotent). Raises Unavailable when the router cannot be told."""
        ...

    def flags(self, revision: str, flags: tuple[tuple[str, bool, float], ...]) -> None:
        """Feature flags a rollout step set for ``revision`` (idempotent)."""
        ...

    def health(self, stable: str | None, canary: str | None) -> Health:
        """Readiness of the stable and canary revisions right now."""
        ...


class Gates(Protocol):
    """Webhook gates: an HTTP POST whose answer lets a rollout through, holds it or fails it."""

    def ask(self, gate: Gate, payload: dict[str, object]) -> tuple[bool, str]:
        """POST ``payload`` to the gate: ``(True, "HTTP 200")`` for a 2xx answer, else ``(False, why)``.
        Never raises: a gate that cannot be reached or times out answers ``False``. ``why`` never
        holds the URL."""
        ...

    def close(self) -> None: ...


class RolloutStore(Protocol):
    """Where a system's rollout lives: spec, status and people's commands (a state directory
    locally; the Rollout custom resource on Kubernetes)."""

    def load(self, system: str) -> tuple[Rollout, RolloutStatus, Controls]:
        """The rollout spec, its persisted status and pending controls. Raises NotFound."""
        ...

    def save(self, system: str, status: RolloutStatus) -> None:
        """Persist the status atomically (the whole status, once per cycle)."""
        ...


class Control(Protocol):
    """The control plane of rollouts: what people ask of a system and what they see. One adapter
    per backend: the local controller (in process, and its HTTP API for the CLI) and Kubernetes
    (the Rollout resource). Refusals are errors: ``NotFound`` (no such system), ``SpecError`` (a
    bad request), ``Conflict`` (the rollout's state does not allow it now: a rollout in progress,
    nothing to go back to...). Every request that changes something takes ``actor``: who asks and
    why, recorded in the events and the history (the backend decides ``actor.user`` from the
    credential it checked: an adapter may replace what the caller put there)."""

    def systems(self) -> list[control.Summary]:
        """Every system this backend runs, sorted by name."""
        ...

    def status(self, system: str) -> control.StatusDocument:
        """The rollout as people see it (``status -o json``)."""
        ...

    def history(self, system: str) -> list[control.HistoryRow]:
        """Every revision known, numbered, with how its rollouts ended."""
        ...

    def events(self, system: str, *, limit: int = 200) -> list[control.EventRow]:
        """The timeline, oldest first, at most ``limit`` events."""
        ...

    def promote(self, system: str, req: control.PromoteRequest, *, actor: control.Actor) -> control.PromoteResult:
        """Start rolling out a new revision, or (``full``) finish the one in flight. Accepting is
        atomic: of two promotes sent at once, one is accepted, the other raises Conflict."""
        ...

    def undo(self, system: str, req: control.UndoRequest, *, actor: control.Actor) -> control.UndoResult:
        """Go back to an earlier revision (instant while it is still warm)."""
        ...

    def command(self, system: str, cmd: control.Command, *, actor: control.Actor) -> control.CommandResult:
        """Pause, resume, abort, retry, roll back, or promote the canary in flight fully."""
        ...

    def toggle(self, system: str, req: control.ToggleRequest, *, actor: control.Actor) -> control.ToggleResult:
        """Turn a feature flag on or off for a share of requests on every revision (idempotent)."""
        ...

    def approve(self, system: str, req: control.ApproveRequest, *, actor: control.Actor) -> control.ApproveResult:
        """Approve (or with ``req.approve`` False, reject) the change awaiting approval. Forbidden
        when the policy does not let ``actor`` decide on it (its author, not an approver); Conflict
        when no change (or not ``req.revision``) is in flight."""
        ...


@dataclass(frozen=True)
class RolloutRecord:
    """A Rollout resource as the control plane reads it (Kubernetes)."""

    name: str
    rollout: Rollout | None  # None: the spec does not parse (the operator reports why)
    status: RolloutStatus
    target: str | None  # spec.revision
    modules: list[str]  # spec.modules: what the target changed
    paused: bool
    toggles: dict[str, dict[str, Any]]
    managed: bool  # the operator has seen the latest generation
    shown: tuple[str, str, str]  # phase, reason, message as the status reports them
    conditions: list[dict[str, Any]] = field(default_factory=list)


class RolloutResources(Protocol):
    """Rollout resources of one namespace: read them, and write people's requests into them."""

    namespace: str

    def records(self) -> list[RolloutRecord]:
        """Every Rollout of the namespace, sorted by name."""
        ...

    def read(self, name: str) -> RolloutRecord:
        """One Rollout. Raises NotFound."""
        ...

    def write(
        self,
        name: str,
        *,
        target: tuple[str, list[str]] | None = None,
        paused: bool | None = None,
        commands: dict[str, float] | None = None,
        toggles: dict[str, dict[str, Any]] | None = None,
        request: dict[str, Any] | None = None,
        break_glass: str | None = None,
    ) -> None:
        """One merge patch: a new target (revision, modules), the pause switch, commands given
        at a time (``abort``, ``resume``, ``retry``, ``promote_full``), the toggles, and the
        request that made it (``{"what", "user", "reason", "at"}``, kept as an annotation). A new
        target also records its author (the caller) and ``break_glass``, the reason the change
        overrides the policy's windows and soak (None: it does not)."""
        ...

    def user(self) -> str:
        """Who the API server says the caller is (SelfSubjectReview): the actor of requests."""
        ...

    def decide(self, name: str, *, revision: str, approve: bool, reason: str | None) -> str:
        """Record the caller's approval (or rejection) of ``revision`` as an object the API server
        attributes to them; returns the approver's name. Forbidden when it refuses."""
        ...

    def approvals(self, name: str, revision: str) -> list[Approval]:
        """Every decision recorded on ``revision`` of the Rollout, oldest first."""
        ...

    def policy(self) -> Policy | None:
        """The namespace's governance policy (None: there is none)."""
        ...

    def events(self, name: str, *, limit: int = 200) -> list[control.EventRow]:
        """The Rollout's events, oldest first."""
        ...


# -- the local runtime (``modship up``): its state directory, processes and side services ----------


@dataclass(frozen=True, slots=True)
class RevisionRecord:
    """A revision built for a system, numbered in the order it was built."""

    number: int
    revision: str
    modules: list[str]  # every module version the revision runs (NAME@VERSION)
    changed: list[str]
    created: float
    overrides: list[str] = field(default_factory=list)  # compatibility problems overridden on purpose


class SystemStore(RolloutStore, Protocol):
    """The local state directory: per system its rollout, revisions and their locks, people's
    commands, the timeline and the toggles. Every write is atomic."""

    def dir(self, system: str) -> Path: ...
    def systems(self) -> list[str]: ...
    def rollout(self, system: str) -> Rollout: ...
    def put_rollout(self, system: str, r: Rollout) -> None: ...
    def status(self, system: str) -> RolloutStatus: ...
    def controls(self, system: str) -> Controls: ...
    def command(self, system: str, **changes: Any) -> Controls: ...
    def add_revision(self, system: str, lock: Lock, *, changed: list[str], overrides: list[str]) -> RevisionRecord: ...
    def revisions(self, system: str) -> list[RevisionRecord]: ...
    def revision_by_number(self, system: str, number: int) -> RevisionRecord: ...
    def lock(self, system: str, rev: str) -> Lock: ...
    def append_event(self, system: str, event: Event, *, now: float) -> None: ...
    def append_request(
        self, system: str, what: str, message: str, *, now: float, actor: dict[str, Any], revision: str | None = None
    ) -> None: ...
    def events(self, system: str, *, limit: int = 200) -> list[dict[str, Any]]: ...
    def toggles(self, system: str) -> dict[str, dict[str, Any]]: ...
    def toggle(self, system: str, flag: str, *, enabled: bool, percent: float) -> None: ...
    def fingerprint(self) -> dict[str, tuple[tuple[str, int, int], ...]]: ...
    def exclusive(self, system: str) -> AbstractContextManager[None]:
        """Hold the system's controller lock (one controller acts on a system)."""
        ...


class Bentos(Protocol):
    """Where revisions are built into Bentos (the local BentoML store)."""

    def build(self, lock: Lock, modules: dict[str, Path]) -> str:
        """Build (or reuse) the Bento of a locked revision from verified module dirs; its tag."""
        ...

    def path(self, lock: Lock) -> Path: ...


class Runtime(Target, Protocol):
    """One system's processes on this machine: a server per revision and the system's router."""

    router_port: int
    router_token: str

    def supervise(self) -> None:
        """Restart what ended (with backoff), adopt what a previous controller left running."""
        ...

    def watch(self, on_exit: Callable[[], None]) -> None: ...
    def serving(self) -> tuple[int | None, Mapping[str, int]]:
        """The router's port (None: not running) and each running revision's port."""
        ...

    def telemetry(self, window: float) -> dict[str, Any] | None: ...
    def report(self) -> dict[str, Any]: ...
    def refresh_toggles(self) -> None: ...
    def stop_all(self) -> None: ...
    def close(self) -> None: ...


class LoadTests(Protocol):
    """Load-test hooks, one per key, each running only while its canary is in flight."""

    def sync(self, key: object, spec: LoadTest | None, base_url: str) -> tuple[bool, str] | None:
        """Run ``spec`` against ``base_url`` for ``key`` (None: stop it); (running, message)."""
        ...

    def stop(self, key: object) -> None: ...
    def close(self) -> None: ...


class GovernanceState(Protocol):
    """The policy, each system's change in flight and the approvals given on it."""

    @property
    def policy_path(self) -> Path: ...
    def policy(self) -> Policy: ...
    def set_policy(self, p: Policy) -> None: ...
    def change(self, system: str) -> Change | None: ...
    def put_change(self, system: str, change: Change) -> None: ...
    def approvals(self, system: str, revision: str) -> tuple[Approval, ...]: ...
    def add_approval(self, system: str, revision: str, a: Approval) -> None: ...


class AuditTrail(Protocol):
    def append(self, body: dict[str, Any]) -> dict[str, Any]: ...  # hash-chained; OSError, ModshipError


class Notifications(Protocol):
    def on_decision(self, r: Rollout, before: RolloutStatus, d: machine.Decision, now: float) -> None:
        """Enqueue a cycle's transitions for their subscribers (never blocks the cycle)."""
        ...

    def close(self, *, timeout: float = 5.0) -> None: ...


@dataclass(frozen=True, slots=True)
class SystemUnits:
    """What one system runs: its router's port and each running revision's port."""

    system: str
    router: int | None
    revisions: Mapping[str, int]
    stable: str | None
    canary: str | None  # only while in flight
    previous: str | None


class ScrapeTargets(Protocol):
    def publish(self, units: list[SystemUnits], *, controller: str | None, scheme: str) -> bool:
        """Tell Prometheus what there is to scrape; True when it changed."""
        ...
