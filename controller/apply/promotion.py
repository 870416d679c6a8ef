"""Deploying and promoting systems: compose the revision, check it, build its Bento, record it,
and point the rollout at it. The rollout itself is the controller's job."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller import ports
from controller.apply import control as rules
from controller.apply import systems
from controller.compose import rebase as rebasing
from controller.compose import revision as revisions
from controller.compose.revision import Lock
from controller.errors import ModshipError, NotFound, SpecError
from controller.ports import RevisionRecord
from controller.spec import refs
from controller.spec import rollout as rollout_spec
from controller.spec.system import System

DEFAULT_ROLLOUT: dict[str, Any] = {
    "strategy": {
        "canary": {
            "steps": [
                {"setWeight": 10},
                {"analysis": {"checks": ["error-rate"]}},
                {"setWeight": 50},
                {"analysis": {"checks": ["error-rate"]}},
            ]
        }
    },
    "analysis": {
        "checks": [
            {
                "name": "error-rate",
                "provider": "builtin",
                "metric": "errorRate",
                "threshold": {"max": 0.02},
                "window": "30s",
                "interval": "5s",
                "count": 2,
                "minSamples": 10,
            },
        ]
    },
}


@dataclass(frozen=True)
class Prepared:
    lock: Lock
    record: RevisionRecord
    notes: list[str]
    overrides: list[str]


def build_revision(
    registry: ports.Registry,
    store: ports.SystemStore,
    system: System,
    *,
    cache: Path,
    bentos: ports.Bentos,
    changed: list[str],
    force: bool = False,
    today: dt.date | None = None,
) -> Prepared:
    """Check (all rules), lock, contract-test and build; ``force`` overrides compatibility problems
    only (never a missing module, a digest mismatch or a failing golden test)."""
    lock, local, overrides = checked_lock(registry, system, cache=cache, force=force, today=today)
    bentos.build(lock, local)
    record = store.add_revision(system.metadata.name, lock, changed=changed, overrides=overrides)
    return Prepared(lock, record, [], overrides)


def checked_lock(
    registry: ports.Registry, system: System, *, cache: Path, force: bool = False, today: dt.date | None = None
) -> tuple[Lock, dict[str, Path], list[str]]:
    """The revision's lock and verified module copies, contract tests passed (or overridden)."""
    checked = systems.check(registry, system, cache=cache, today=today)
    overrides = []
    compat_fields = [v for v in checked.report.violations if v.kind == "compat"]
    fatal = [v for v in checked.report.violations if v.kind != "compat"]
    if fatal or (compat_fields and not force):
        systems.raise_violations(checked.report, system.metadata.name)
    overrides = [f"{v} (overridden with --force)" for v in compat_fields]
    lock = systems.lock(checked)
    failures = systems.contract_tests(lock, checked.local)
    module_failures = [f for f in failures if not f.startswith("smoke")]
    if module_failures or (failures and not force):
        raise ModshipError("contract tests failed, nothing built:\n  " + "\n  ".join(failures))
    overrides += [f"{f} (overridden with --force)" for f in failures]
    return lock, checked.local, overrides


def deploy(
    registry: ports.Registry,
    store: ports.SystemStore,
    system: System,
    rollout_doc: dict[str, Any] | None,
    *,
    cache: Path,
    bentos: ports.Bentos,
    port: int,
) -> Prepared:
    """Register a system with the local controller: its first revision becomes stable at once."""
    name = system.metadata.name
    prepared = build_revision(registry, store, system, cache=cache, bentos=bentos, changed=[])
    doc = dict(rollout_doc or {"spec": DEFAULT_ROLLOUT})
    doc.setdefault("apiVersion", "modship.dev/v1alpha1")
    doc.setdefault("kind", "Rollout")
    doc["metadata"] = {**(doc.get("metadata") or {}), "name": name}
    spec = dict(doc.get("spec") or {})
    spec["system"] = name
    spec["revision"] = prepared.lock.revision
    doc["spec"] = spec
    r = rollout_spec.from_document(doc, source="rollout")
    (store.dir(name)).mkdir(parents=True, exist_ok=True)
    (store.dir(name) / "port").write_text(str(port))
    store.put_rollout(name, r)
    return prepared


def compose_next(
    registry: ports.Registry,
    store: ports.SystemStore,
    name: str,
    *,
    modules: list[str],
    spec: System | None,
    cache: Path,
    bentos: ports.Bentos,
    force: bool = False,
) -> tuple[Prepared, list[str]]:
    """Compose and build the next revision from the stable one (``set_target`` then points the
    rollout at it). Raises Conflict when a rollout is in progress or the result is stable already."""
    r, status, _ = store.load(name)
    rules.ensure_no_rollout(name, status, r.spec.revision)
    rules.ensure_stable(name, status)
    assert status.stable is not None
    notes: list[str] = []
    if spec is not None:
        new = spec
        if new.metadata.name != name:
            raise SpecError(f"the spec is for system {new.metadata.name!r}, not {name!r}", field="metadata.name")
    else:
        base = store.lock(name, status.stable).system

        def resolve(ref: str) -> Any:
            return registry.resolve(refs.parse(ref))

        new, notes = rebasing.rebase(base, modules, resolve)
    prepared = build_revision(registry, store, new, cache=cache, bentos=bentos, changed=modules, force=force)
    rules.ensure_new(name, status, prepared.lock.revision)
    return prepared, notes


def set_target(store: ports.SystemStore, name: str, revision: str, modules: list[str]) -> None:
    r = store.rollout(name)
    body = r.spec.model_copy(update={"revision": revision, "modules": tuple(modules)})
    store.put_rollout(r.name, r.model_copy(update={"spec": body}))
    # a new target starts clean: a standing pause and commands given before do not carry over
    store.command(r.name, paused=False, abort=None, resume=None, promote_full=None, retry=None)


def undo(store: ports.SystemStore, name: str, *, to: int | None) -> RevisionRecord:
    """Roll back to revision ``to`` (default: the previous stable one). Instant when still warm."""
    r, status, _ = store.load(name)
    if to is None:
        prev = rules.previous_revision(name, status)
        rec = next((x for x in store.revisions(name) if x.revision == prev), None)
        if rec is None:
            raise NotFound(f"{name}: revision {prev} is not recorded")
    else:
        rec = store.revision_by_number(name, to)
    rules.ensure_can_go_back(name, status, r.spec.revision, rec.revision, rec.number)
    set_target(store, name, rec.revision, [f"undo to revision {rec.number}"])
    return rec


def rollback(store: ports.SystemStore, name: str) -> str:
    """Abort a canary in flight; after a promotion, go back to the previous (warm) stable at once."""
    status = store.status(name)
    if status.in_flight:
        store.command(name, abort=time.time())
        return rules.aborting(status)
    rec = undo(store, name, to=None)
    return f"rolling back to revision {rec.number} ({rec.revision})"


def lock_for(store: ports.SystemStore, name: str, rev: str) -> Lock:
    return store.lock(name, rev)


def write_lock(lock: Lock, path: Path) -> None:
    revisions.write(lock, path)
