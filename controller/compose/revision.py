"""A revision: a System with every module ref pinned to a version and digest; its hash names it.

Stored as a lock file (``kind: SystemLock``) that carries everything needed to run the system
without the registry: pinned refs, per-file digests and each module's manifest.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from controller import atomic
from controller.errors import SpecError
from controller.registry.versions import ModuleVersion
from controller.spec import parse
from controller.spec.base import Spec
from controller.spec.modules import API_VERSION, ModuleManifest
from controller.spec.objects import ObjectMeta
from controller.spec.system import Input, Step, System


class PinnedModule(Spec):
    ref: str
    digest: str
    files: dict[str, str]
    source: str
    manifest: ModuleManifest

    @property
    def name(self) -> str:
        return self.ref.split("@")[0]

    @property
    def version(self) -> int:
        return int(self.ref.split("@")[1])


class Lock(Spec):
    api_version: Literal["modship.dev/v1alpha1"] = API_VERSION
    kind: Literal["SystemLock"] = "SystemLock"
    metadata: ObjectMeta
    revision: str
    system: System
    requested: dict[str, str] = Field(default_factory=dict, description="ref as written -> pinned ref")
    modules: dict[str, PinnedModule]

    @property
    def name(self) -> str:
        return self.metadata.name

    def module(self, ref: str) -> PinnedModule:
        return self.modules[ref]

    def labels(self) -> dict[str, str]:
        """Labels for the Bento and Kubernetes objects: system, revision, module versions, digests."""
        out = {"modship.dev/system": self.name, "modship.dev/revision": self.revision}
        for _, m in sorted(self.modules.items()):
            out[f"modship.dev/module.{m.name}"] = str(m.version)
            out[f"modship.dev/digest.{m.name}"] = m.digest.removeprefix("sha256:")[:16]
        return out


def step_refs(s: Step) -> list[str]:
    """The module refs one step uses: its module, adapters on its inputs, its fallback module."""
    out = [s.module, *(w.adapter for w in s.wired().values() if w.adapter)]
    if s.fallback and s.fallback.module:
        out.append(s.fallback.module)
    return out


def refs_of(system: System) -> list[str]:
    """Every module ref a system uses (steps, adapters, fallbacks), in document order, unique."""
    return list(dict.fromkeys(r for s in system.spec.steps for r in step_refs(s)))


def pin(system: System, resolved: dict[str, ModuleVersion]) -> Lock:
    """The lock for ``system`` given the version each of its refs resolved to."""
    requested = {ref: resolved[ref].ref for ref in refs_of(system)}
    pinned = _pinned_system(system, requested)
    modules = {
        mv.ref: PinnedModule(ref=mv.ref, digest=mv.digest, files=dict(mv.files), source=mv.source, manifest=mv.manifest)
        for mv in (resolved[r] for r in requested)
    }
    return Lock(
        metadata=ObjectMeta(name=system.metadata.name),
        revision=revision_id(pinned, modules),
        system=pinned,
        requested=requested,
        modules=dict(sorted(modules.items())),
    )


def revision_id(system: System, modules: dict[str, PinnedModule]) -> str:
    canonical = json.dumps(
        {"spec": system.spec.dump(), "digests": {ref: m.digest for ref, m in sorted(modules.items())}},
        sort_keys=True,
        separators=(",", ":"),
    )
    return "r" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _pinned_system(system: System, requested: dict[str, str]) -> System:
    steps = []
    for s in system.spec.steps:
        inputs: dict[str, Input | str] = {
            k: w.model_copy(update={"adapter": requested[w.adapter]}) if w.adapter else w for k, w in s.wired().items()
        }
        fb = s.fallback
        if fb is not None and fb.module is not None:
            fb = fb.model_copy(update={"module": requested[fb.module]})
        steps.append(s.model_copy(update={"module": requested[s.module], "inputs": inputs, "fallback": fb}))
    return system.model_copy(update={"spec": system.spec.model_copy(update={"steps": steps})})


def dump(lock: Lock) -> str:
    return yaml.safe_dump(lock.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)


def write(lock: Lock, path: Path) -> None:
    atomic.write_text(path, dump(lock))


def load(path: Path) -> Lock:
    lock = parse.load(Lock, path)
    expected = revision_id(lock.system, lock.modules)
    if lock.revision != expected:
        raise SpecError(
            f"revision {lock.revision} does not match its content ({expected}): the lock was edited",
            field="revision",
            source=str(path),
        )
    return lock


def is_lock(data: Any) -> bool:
    return isinstance(data, dict) and data.get("kind") == "SystemLock"
