"""GitOps use cases: render a system's manifests into a directory, promote by editing the Git
working tree, and say where Git and the cluster disagree (drift).

What to write is decided in ``compose.manifests`` (the objects) and ``compose.roundtrip`` (edits that
keep comments and layout); this module reads and writes the files. ``promote_gitops`` edits only
``spec.revision`` and ``spec.modules`` of the Rollout; ``drift`` compares the Git Rollout with the
live CR, e.g. when the operator rolled the canary back and Git still asks for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from controller import atomic, ports
from controller.compose import manifests as mf
from controller.compose import revision as revisions
from controller.compose import roundtrip
from controller.compose.revision import Lock
from controller.errors import SpecError
from controller.plan import capabilities
from controller.spec import parse, refs, wire
from controller.spec import system as systems
from controller.spec.rollout import Rollout
from controller.spec.system import System

ROLLBACK_BY_USER = frozenset({"AbortedByUser"})


# -- render -----------------------------------------------------------------------------------------


def load_inputs(
    target: Path, rollout_path: Path | None, system_path: Path | None
) -> tuple[Rollout, System | None, Lock | None]:
    """The Rollout to render and the System (or lock) it delivers, from a System, lock or Rollout
    file and the optional other half; a System alone gets the default stepped canary."""
    doc = _document(target)
    kind = doc.get("kind")
    if kind == "Rollout":
        if rollout_path is not None:
            raise SpecError("the target is a Rollout already: drop --rollout", field="--rollout")
        r = wire.parse_rollout(doc, source=str(target))
        loaded = _system_or_lock(system_path) if system_path is not None else None
    elif kind in ("System", "SystemLock"):
        if system_path is not None:
            raise SpecError("the target is a System already: drop --system", field="--system")
        loaded = _system_or_lock(target)
        name = (loaded.system if isinstance(loaded, Lock) else loaded).metadata.name
        r = (
            wire.parse_rollout(_document(rollout_path), source=str(rollout_path))
            if rollout_path is not None
            else wire.default_rollout(name)
        )
    else:
        raise SpecError(
            f"expected a System, SystemLock or Rollout, got kind {kind!r}", field="kind", source=str(target)
        )
    lock = loaded if isinstance(loaded, Lock) else None
    system = loaded.system if isinstance(loaded, Lock) else loaded
    if system is not None and system.metadata.name != r.spec.system:
        raise SpecError(
            f"the Rollout delivers system {r.spec.system!r} but the System is {system.metadata.name!r}",
            field="spec.system",
        )
    return r, system, lock


def render(
    out: Path,
    target: Path,
    *,
    rollout: Path | None = None,
    system: Path | None = None,
    namespace: str | None = None,
    image: str | None = None,
    traffic: mf.TrafficOptions | None = None,
) -> tuple[str, list[Path], list[capabilities.Gap]]:
    """``modship render``: the system's manifests written into ``out``; (system, files written, what
    the rendered Rollout's traffic provider cannot serve)."""
    r, sys_spec, lock = load_inputs(target, rollout, system)
    items = mf.manifests(
        r, system=sys_spec, lock=lock, namespace=namespace, image=image, traffic=traffic or mf.TrafficOptions()
    )
    cr = next(m.doc for m in items if m.file == mf.ROLLOUT_FILE)
    gaps = capabilities.gaps(Rollout.model_validate(cr))
    return r.spec.system, write(out, mf.texts(items, namespace)), gaps


def write(out: Path, texts: dict[str, str]) -> list[Path]:
    """Write every file (each atomically); remove rendered files this render no longer writes."""
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted(mf.MANAGED_FILES - texts.keys()):
        stale = out / name
        if stale.is_file() and stale.read_text(encoding="utf-8", errors="replace").startswith(mf.HEADER):
            stale.unlink()
    written = []
    for name, text in sorted(texts.items()):
        path = out / name
        _write(path, text)
        written.append(path)
    return written


# -- promote --gitops -------------------------------------------------------------------------------


def find_rollout(directory: Path, system: str) -> Path:
    """``DIR/rollout.yaml``, ``DIR/<system>/rollout.yaml``, or DIR itself when it is a file."""
    if directory.is_file():
        return directory
    candidates = [directory / mf.ROLLOUT_FILE, directory / system / mf.ROLLOUT_FILE]
    for path in candidates:
        if path.is_file():
            return path
    raise SpecError(
        f"no Rollout manifest for system {system!r}: looked for {' and '.join(str(p) for p in candidates)}",
        source=str(directory),
    )


def wanted_revision(directory: Path, system: str) -> str | None:
    """The revision the Rollout in Git asks for (None: none yet)."""
    spec = _document(find_rollout(directory, system)).get("spec")
    want = spec.get("revision") if isinstance(spec, dict) else None
    return str(want) if want else None


def promote_gitops(dir: Path, system: str, revision: str, modules: list[str]) -> Path:
    """Set spec.revision and spec.modules of ``system``'s Rollout in a Git working tree; return its path.

    Only those two values change; comments, key order and layout stay. Refuses (SpecError, nothing
    written) when there is no Rollout file, it is not a Rollout for ``system``, or the values are bad.
    """
    path, text, edited = _promoted(dir, system, revision, modules)
    if edited != text:
        _write(path, edited)
    return path


def _promoted(dir: Path, system: str, revision: str, modules: list[str]) -> tuple[Path, str, str]:
    """The Rollout file, its text, and its text with the new revision and modules."""
    if not wire.REVISION.match(revision):
        raise SpecError(f"{revision!r} is not a revision id (r + 12 hex digits)", field="revision")
    for i, m in enumerate(modules):
        refs.parse(m, field=f"modules[{i}]", require_qualifier=True)
    path = find_rollout(dir, system)
    text, doc = _load_rollout(path, system)
    expected = json.loads(json.dumps(doc))
    expected["spec"]["revision"] = revision
    if modules or "modules" in doc["spec"]:
        expected["spec"]["modules"] = list(modules)
    try:
        edited = roundtrip.edit(text, lambda root: _set_revision(root, revision, modules), source=str(path))
    except SpecError:  # YAML the round trip cannot read, though the file parsed: write the document anew
        edited = mf.dump(expected)
    if yaml.safe_load(edited) != expected:  # never write a file that does not say what was asked
        edited = mf.dump(expected)
    wire.parse_rollout(yaml.safe_load(edited), source=str(path))
    return path, text, edited


def _set_revision(root: Any, revision: str, modules: list[str]) -> None:
    spec = root["spec"]
    roundtrip.set_after(spec, "system", "revision", revision)
    if modules or "modules" in spec:
        roundtrip.set_list(spec, "modules", list(modules), after="revision")


def promote_in_tree(
    registry: ports.Registry,
    dir: Path,
    system: str,
    modules: list[str],
    *,
    spec: Path | None,
    force: bool,
    cache: Path,
) -> dict[str, Any]:
    """``modship promote --gitops DIR``: compose the next revision from the lock kept in the tree's
    ConfigMap (or from ``spec``), check and contract-test it, then edit the Rollout manifest and the
    ConfigMap in place: a commit-ready change for Argo CD or Flux to sync."""
    from controller.apply import promotion
    from controller.compose import rebase as rebasing

    cm_path = dir / mf.CONFIGMAP_FILE
    notes: list[str] = []
    if spec is not None:
        new = systems.load(spec)
    else:
        base = _tree_lock(cm_path, dir)
        new, notes = rebasing.rebase(base.system, modules, lambda ref: registry.resolve(refs.parse(ref)))
    lock, _, overrides = promotion.checked_lock(registry, new, cache=cache, force=force)
    path, text, edited = _promoted(dir, system, lock.revision, modules)
    cm_text = _with_lock(cm_path, new, lock) if cm_path.exists() else None
    if edited != text:  # both files edited before either is written: nothing half-done
        _write(path, edited)
    if cm_text is not None:
        _write(cm_path, cm_text)
    return {"file": str(path), "revision": lock.revision, "changes": notes, "overrides": overrides}


def _tree_lock(cm_path: Path, dir: Path) -> Lock:
    if not cm_path.exists():
        raise SpecError(
            f"no configmap.yaml with the current lock in {dir}: render it first, or pass --spec", field="--gitops"
        )
    lock_text = (_document(cm_path).get("data") or {}).get("lock.yaml")
    if not lock_text:
        raise SpecError("the ConfigMap holds no lock.yaml: pass --spec", source=str(cm_path))
    return parse.to_model(Lock, yaml.safe_load(lock_text), source=f"{cm_path}: lock.yaml")


def update_configmap(path: Path, system: System, lock: Lock) -> None:
    """Keep ``lock`` (and its System spec) in a rendered tree's ConfigMap; the rest of the file stays."""
    _write(path, _with_lock(path, system, lock))


def _with_lock(path: Path, system: System, lock: Lock) -> str:
    text = path.read_text(encoding="utf-8")
    return roundtrip.edit(text, lambda cm: _set_lock(cm, system, lock), source=str(path))


def _set_lock(cm: Any, system: System, lock: Lock) -> None:
    data = cm.get("data")
    if data is None:
        cm["data"] = data = {}
    data["lock.yaml"] = roundtrip.literal(revisions.dump(lock))
    data["system.yaml"] = roundtrip.literal(mf.system_yaml(system, only_set=False))
    meta = cm.get("metadata")
    if meta is None:
        cm["metadata"] = meta = {}
    labels = meta.get("labels")
    if labels is None:
        meta["labels"] = labels = {}
    labels[mf.REVISION_LABEL] = lock.revision


# -- drift ------------------------------------------------------------------------------------------


def drift(dir: Path, live_cr: dict[str, Any]) -> list[str]:
    """Where the Rollout in Git and the live CR disagree, as sentences; [] when they agree.

    Spec fields that differ (not synced yet, or edited in the cluster), and what runs versus what
    Git asks for: a rollback, an abort or a revision the operator has not started.
    """
    live_spec = live_cr.get("spec") or {}
    system = live_spec.get("system") or (live_cr.get("metadata") or {}).get("name")
    if not isinstance(system, str):
        raise SpecError("the live object has neither spec.system nor metadata.name", field="spec.system")
    _, git = _load_rollout(find_rollout(dir, system), system)
    out = [
        f"{field}: Git has {_show(g)}, the cluster has {_show(c)}"
        for field, g, c in differences(wire.normal(git["spec"]), wire.normal(live_spec), "spec")
    ]
    want = git["spec"].get("revision")
    note = running(want, live_cr.get("status") or {}) if want else None
    return [*out, note] if note else out


def differences(git: Any, live: Any, path: str) -> list[tuple[str, Any, Any]]:
    """(field, Git's value, the cluster's) wherever two documents differ, fields in sorted order."""
    if isinstance(git, dict) and isinstance(live, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(git.keys() | live.keys()):
            out += differences(git.get(key), live.get(key), f"{path}.{key}")
        return out
    if isinstance(git, list) and isinstance(live, list) and len(git) == len(live):
        return [d for i, (g, c) in enumerate(zip(git, live, strict=True)) for d in differences(g, c, f"{path}[{i}]")]
    return [] if git == live else [(path, git, live)]


def running(want: str, status: dict[str, Any]) -> str | None:
    """What runs when it is not the revision Git asks for, and why; None when it is (or is on its way)."""
    phase = status.get("phase")
    stable, canary = status.get("stableRevision"), status.get("canaryRevision")
    if stable == want or (canary == want and phase in ("Progressing", "Paused", None)):
        return None
    runs = f"the cluster runs {stable or 'no stable revision'}"
    reason = status.get("reason") or ""
    why = f"{reason}: {status['message']}" if status.get("message") else reason or "no reason recorded"
    if phase in ("Aborted", "Failed") and canary == want:
        if reason in ROLLBACK_BY_USER:
            return f"Git asks for {want}, {runs}: the rollout was aborted by a user (reason {why})"
        return f"Git asks for {want}, {runs} after an automatic rollback (reason {why})"
    if reason == "RolledBack":
        return f"Git asks for {want}, {runs} after a manual rollback (modship undo)"
    return f"Git asks for {want}, {runs} (phase {phase or 'unknown'}): the operator has not started {want} yet"


def _show(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value, separators=(", ", ": "))


# -- files ------------------------------------------------------------------------------------------


def _document(path: Path) -> dict[str, Any]:
    docs = parse.load_documents(path)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise SpecError(f"expected one YAML mapping, found {len(docs)} document(s)", source=str(path))
    doc: dict[str, Any] = docs[0]
    return doc


def _system_or_lock(path: Path) -> System | Lock:
    doc = _document(path)
    if revisions.is_lock(doc):
        return revisions.load(path)
    return systems.from_document(doc, source=str(path))


def _load_rollout(path: Path, system: str | None) -> tuple[str, dict[str, Any]]:
    """The Rollout file's text and document; SpecError unless it is one valid Rollout for ``system``."""
    text = path.read_text(encoding="utf-8")
    docs = parse.parse_text(text, source=str(path))
    doc = docs[0] if docs else None
    if (
        len(docs) != 1
        or not isinstance(doc, dict)
        or doc.get("kind") != "Rollout"
        or doc.get("apiVersion") != wire.API_VERSION
    ):
        kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        raise SpecError(
            f"not a Rollout manifest (expected one {wire.API_VERSION} Rollout; "
            f"found {len(docs)} document(s), kind {kind!r})",
            source=str(path),
        )
    wire.parse_rollout(doc, source=str(path))
    if system is not None and doc["spec"].get("system") != system:
        raise SpecError(
            f"the Rollout delivers system {doc['spec'].get('system')!r}, not {system!r}",
            field="spec.system",
            source=str(path),
        )
    return text, doc


def _write(path: Path, text: str) -> None:
    """Replace ``path`` atomically, keeping the file's permissions."""
    atomic.write_text(path, text)
