"""In-memory adapters for every port: real code for unit tests and ``--dry-run``, never a stand-in
for testing a real adapter.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from controller import ports
from controller.errors import NotFound
from controller.plan.actions import SetTraffic
from controller.plan.governance import Approval
from controller.plan.observations import Controls, Health, QueryContext, Sample
from controller.plan.status import RolloutStatus
from controller.registry import digests
from controller.registry.bundle import Bundle
from controller.registry.versions import ModuleVersion
from controller.spec import control
from controller.spec.policy import Policy
from controller.spec.refs import ModuleRef
from controller.spec.rollout import Check, Gate, Rollout


class MemoryRegistry:
    """A registry in a dict. ``fetch`` copies the registered bytes kept in memory."""

    def __init__(self, *, clock: dt.datetime | None = None) -> None:
        self._versions: dict[str, dict[int, ModuleVersion]] = {}
        self._blobs: dict[tuple[str, int], dict[str, bytes]] = {}
        self._aliases: dict[str, dict[str, int]] = {}
        self._clock = clock

    def modules(self) -> list[str]:
        return sorted(self._versions)

    def versions(self, name: str) -> list[ModuleVersion]:
        if name not in self._versions:
            raise NotFound(f"module {name!r} is not registered")
        return [self._with_aliases(v) for _, v in sorted(self._versions[name].items())]

    def resolve(self, ref: ModuleRef) -> ModuleVersion:
        versions = self._versions.get(ref.name)
        if not versions:
            raise NotFound(f"module {ref.name!r} is not registered")
        if ref.version is not None:
            if ref.version not in versions:
                raise NotFound(f"{ref} does not exist (versions: {sorted(versions)})")
            return self._with_aliases(versions[ref.version])
        if ref.alias is not None:
            number = self._aliases.get(ref.name, {}).get(ref.alias)
            if number is None:
                raise NotFound(f"{ref}: no such alias")
            return self._with_aliases(versions[number])
        return self._with_aliases(versions[max(versions)])

    def register(self, bundle: Bundle) -> ModuleVersion:
        name = bundle.manifest.name
        existing = self._versions.setdefault(name, {})
        number = max(existing, default=0) + 1
        blobs = {rel: (bundle.root / rel).read_bytes() for rel in bundle.files}
        mv = ModuleVersion(
            name=name,
            version=number,
            manifest=bundle.manifest,
            digest=bundle.digest,
            files=dict(bundle.files),
            source=f"memory://{name}/{number}",
            created=self._clock or dt.datetime.now(dt.UTC),
            deprecation=bundle.manifest.metadata.deprecation,
            source_digest=bundle.digest,
        )
        existing[number] = mv
        self._blobs[(name, number)] = blobs
        return mv

    def fetch(self, version: ModuleVersion, dest: Path) -> Path:
        if dest.exists():
            shutil.rmtree(dest)
        for rel, data in self._blobs[(version.name, version.version)].items():
            path = dest / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        digests.verify(dest, version.files, what=version.ref)
        return dest

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self.resolve(ModuleRef(name, version=version))
        self._aliases.setdefault(name, {})[alias] = version

    def delete_alias(self, name: str, alias: str) -> None:
        self._aliases.get(name, {}).pop(alias, None)

    def deprecate(self, name: str, version: int, after: dt.date | None) -> None:
        mv = self.resolve(ModuleRef(name, version=version))
        self._versions[name][version] = replace(mv, deprecation=after, aliases=())

    def tamper(self, name: str, version: int, rel: str) -> None:
        """Flip one byte of a stored file (for integrity tests)."""
        blob = bytearray(self._blobs[(name, version)][rel])
        blob[0] ^= 0xFF
        self._blobs[(name, version)][rel] = bytes(blob)

    def _with_aliases(self, mv: ModuleVersion) -> ModuleVersion:
        aliases = tuple(sorted(a for a, v in self._aliases.get(mv.name, {}).items() if v == mv.version))
        return replace(mv, aliases=aliases)


class MemoryTarget:
    """The Target port in memory: revisions 'run' at once (or after ``start_delay`` health checks)."""

    def __init__(self, *, start_delay: int = 0) -> None:
        self.running: dict[str, str] = {}  # revision -> role
        self.traffic: SetTraffic | None = None
        self.flag_sets: dict[str, tuple[tuple[str, bool, float], ...]] = {}
        self.calls: list[tuple[str, str]] = []
        self.start_delay = start_delay
        self._checks: dict[str, int] = {}
        self.failing: set[str] = set()

    def ensure(self, revision: str, role: str) -> None:
        if revision not in self.running:
            self.calls.append(("ensure", revision))
        self.running[revision] = role

    def stop(self, revision: str) -> None:
        if self.running.pop(revision, None) is not None:
            self.calls.append(("stop", revision))

    def route(self, traffic: SetTraffic) -> None:
        if traffic != self.traffic:
            self.calls.append(("route", f"{traffic.stable}/{traffic.canary}@{traffic.weight:g}"))
        self.traffic = traffic

    def flags(self, revision: str, flags: tuple[tuple[str, bool, float], ...]) -> None:
        self.flag_sets[revision] = flags

    def health(self, stable: str | None, canary: str | None) -> Health:
        def ready(rev: str | None) -> bool:
            if rev is None or rev not in self.running:
                return False
            self._checks[rev] = self._checks.get(rev, 0) + 1
            return self._checks[rev] > self.start_delay

        failed = f"{canary} keeps crashing" if canary in self.failing else None
        return Health(stable_ready=ready(stable), canary_ready=ready(canary), canary_failed=failed)


class MemoryStore:
    """The RolloutStore port in memory (a dict per system)."""

    def __init__(self) -> None:
        self.rollouts: dict[str, Rollout] = {}
        self.statuses: dict[str, RolloutStatus] = {}
        self.controls: dict[str, Controls] = {}
        self.saves = 0

    def load(self, system: str) -> tuple[Rollout, RolloutStatus, Controls]:
        if system not in self.rollouts:
            raise NotFound(f"system {system!r} is not deployed")
        return self.rollouts[system], self.statuses.get(system, RolloutStatus()), self.controls.get(system, Controls())

    def save(self, system: str, status: RolloutStatus) -> None:
        self.statuses[system] = status
        self.saves += 1


class MemoryMetrics:
    """A MetricsSource answering from a function ``(check, ctx) -> Sample`` (scripted scenarios)."""

    def __init__(self, answer: Callable[[Check, QueryContext], Sample]) -> None:
        self.answer = answer
        self.queries: list[tuple[str, str]] = []
        self.up = True

    def online(self) -> bool:
        return self.up

    def sample(self, check: Check, ctx: QueryContext) -> Sample:
        self.queries.append((check.name, ctx.revision))
        if not self.up:
            return Sample(value=None, error="metrics backend down")
        return self.answer(check, ctx)


class MemoryRollouts:
    """Rollout resources in a dict (``ports.RolloutResources``): what ``write`` records is what
    the next ``read`` returns; commands are kept with their times, as annotations are."""

    def __init__(self, namespace: str = "default") -> None:
        self.namespace = namespace
        self.items: dict[str, ports.RolloutRecord] = {}
        self.commands: dict[str, dict[str, float]] = {}
        self.posted: dict[str, list[control.EventRow]] = {}
        self.requests: dict[str, list[dict[str, Any]]] = {}
        self.caller = "memory-user"  # what ``user()`` answers (the API server's view of the caller)
        self.decisions: dict[str, list[tuple[str, Approval]]] = {}
        self.authors: dict[str, tuple[str, str | None]] = {}  # the last target's author, break-glass reason
        self.governance: Policy | None = None  # what ``policy()`` answers

    def user(self) -> str:
        return self.caller

    def put(self, record: ports.RolloutRecord) -> None:
        self.items[record.name] = record

    def records(self) -> list[ports.RolloutRecord]:
        return [self.items[k] for k in sorted(self.items)]

    def read(self, name: str) -> ports.RolloutRecord:
        if name not in self.items:
            raise NotFound(f"system {name!r} has no Rollout in namespace {self.namespace}")
        return self.items[name]

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
        x = self.read(name)
        if target is not None:
            self.authors[name] = (self.caller, break_glass)
        if request is not None:
            self.requests.setdefault(name, []).append(dict(request))
        if target is not None:
            x = replace(x, target=target[0], modules=list(target[1]))
        if paused is not None:
            x = replace(x, paused=paused)
        if toggles is not None:
            x = replace(x, toggles=dict(toggles))
        self.items[name] = x
        self.commands.setdefault(name, {}).update(commands or {})

    def events(self, name: str, *, limit: int = 200) -> list[control.EventRow]:
        self.read(name)
        return self.posted.get(name, [])[-limit:]

    def decide(self, name: str, *, revision: str, approve: bool, reason: str | None) -> str:
        self.read(name)
        self.decisions.setdefault(name, []).append((revision, Approval(self.caller, approve, 0.0, reason or "")))
        return self.caller

    def policy(self) -> Policy | None:
        return self.governance

    def approvals(self, name: str, revision: str) -> list[Approval]:
        return [a for rev, a in self.decisions.get(name, []) if rev == revision]


class MemoryGates:
    """Gates that answer as a test says: ``answers[name]`` is a status code (default 200)."""

    def __init__(self, answers: dict[str, int] | None = None) -> None:
        self.answers = dict(answers or {})
        self.asked: list[tuple[str, dict[str, object]]] = []

    def ask(self, gate: Gate, payload: dict[str, object]) -> tuple[bool, str]:
        self.asked.append((gate.name, payload))
        code = self.answers.get(gate.name, 200)
        return 200 <= code < 300, f"HTTP {code}"

    def close(self) -> None:
        pass
