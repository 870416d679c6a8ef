"""The modules behind a revision, for people (the dashboard): each pinned version with its contract,
metadata and lineage, every edge of the system checked again, and for each edge the compatibility
matrix of all registered versions of its two modules (for an edge through an adapter: of the two
modules directly, which says why the adapter is there).

The lock file says what runs (no registry needed for that); the registry adds what was registered
since (other versions, parents' own parents). A registry that cannot be reached leaves those parts
out with a note instead of failing the whole answer.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from controller import ports
from controller.compose import validate
from controller.compose.revision import Lock
from controller.errors import ModshipError
from controller.registry import compat
from controller.registry.versions import ModuleVersion
from controller.spec import refs

LINEAGE_DEPTH = 6


def describe(lock: Lock, registry: ports.Registry | None, *, today: dt.date) -> dict[str, Any]:
    pinned = {
        ref: ModuleVersion(m.name, m.version, m.manifest, m.digest, dict(m.files), m.source)
        for ref, m in lock.modules.items()
    }
    report = validate.check(lock.system, lambda ref: pinned.get(lock.requested.get(ref, ref)) or ref, today=today)
    notes: list[str] = []
    modules = [_module(mv, registry, notes) for mv in pinned.values()]
    edges = [e for e in report.edges if not e.source.startswith("input.")]
    matrices = [_matrix(e, registry, notes) for e in edges] if registry else []
    return {
        "revision": lock.revision,
        "system": lock.name,
        "modules": modules,
        "edges": [e.to_json() for e in report.edges],
        "violations": [{"step": v.step, "field": v.field, "reason": v.reason} for v in report.violations],
        "matrices": [m for m in matrices if m is not None],
        "notes": sorted(set(notes)),
    }


def _module(mv: ModuleVersion, registry: ports.Registry | None, notes: list[str]) -> dict[str, Any]:
    m = mv.manifest
    return {
        "ref": mv.ref,
        "name": mv.name,
        "version": mv.version,
        "role": m.role.value,
        "digest": mv.digest,
        "stability": m.metadata.stability.value,
        "contract": m.contract.dump(),
        "metadata": m.metadata.dump(),
        "runtime": m.runtime.kind,
        "faults": m.runtime.faults.dump() if m.runtime.faults is not None else None,
        "lineage": _lineage(mv, registry, notes),
    }


def _lineage(mv: ModuleVersion, registry: ports.Registry | None, notes: list[str]) -> list[dict[str, Any]]:
    """Parents, their parents... (breadth first, each once), as far as the registry knows them."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    frontier = [(p, mv.ref) for p in mv.manifest.metadata.provenance.parents]
    while frontier and len(seen) < LINEAGE_DEPTH * 4:
        ref, child = frontier.pop(0)
        if ref in seen:
            continue
        seen.add(ref)
        row: dict[str, Any] = {"ref": ref, "child": child}
        if registry is not None:
            try:
                parent = registry.resolve(refs.parse(ref, field="parents"))
                row["role"] = parent.manifest.role.value
                row["origin"] = parent.manifest.metadata.provenance.origin
                frontier += [(p, parent.ref) for p in parent.manifest.metadata.provenance.parents]
            except ModshipError as exc:
                notes.append(f"lineage: {ref}: {exc}")
        out.append(row)
    return out


def _matrix(e: validate.Edge, registry: ports.Registry | None, notes: list[str]) -> dict[str, Any] | None:
    assert registry is not None
    out_port = e.source.split(".", 1)[1] if "." in e.source else None
    try:
        producers = _versions(registry, e.producer)
        consumers = _versions(registry, e.consumer)
    except ModshipError as exc:
        notes.append(f"compatibility matrix {e.producer} -> {e.consumer}: registry: {exc}")
        return None
    cells = compat.matrix(producers, consumers, out_port=out_port, in_port=e.port)
    direct = f" (direct, without the adapter {e.adapter})" if e.adapter else ""
    return {
        "edge": f"{e.source} -> {e.step}.{e.port}{direct}",
        "producers": [p for p, _ in producers],
        "consumers": [c for c, _ in consumers],
        "cells": [c.to_json() for c in cells],
    }


def _versions(registry: ports.Registry, ref: str) -> list[tuple[str, Any]]:
    name = ref.split("@", 1)[0]
    return [(v.ref, v.manifest.contract) for v in registry.versions(name)]
