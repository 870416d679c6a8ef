"""The local state directory: one folder per system under ``$MODSHIP_HOME/systems/<name>/``.

    rollout.yaml        the Rollout spec in effect (spec.revision is the target)
    status.json         the persisted RolloutStatus (atomic writes: tmp + fsync + rename)
    controls.json       people's commands (pause/resume/abort/promote --full/retry), with times
    revisions.json      every revision built for the system, numbered (history, undo)
    revisions/<r>.lock.yaml   their lock files
    events.jsonl        the timeline (one JSON event per line; people's requests carry an actor)
    flags.json          feature-flag toggles for every revision of the system
    controller.lock     held (flock) by the one controller acting on the system

Writes are atomic, so a controller killed at any instant (even ``kill -9``) leaves either the old
or the new file, never half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from controller import atomic
from controller.compose import revision as revisions
from controller.compose.revision import Lock
from controller.errors import Conflict, NotFound
from controller.plan.actions import Event
from controller.plan.observations import Controls
from controller.plan.status import RolloutStatus
from controller.ports import RevisionRecord
from controller.spec import rollout as rollout_spec
from controller.spec.rollout import Rollout


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._parsed: dict[str, tuple[tuple[int, int, int], Rollout]] = {}  # system -> (file key, spec)

    def dir(self, system: str) -> Path:
        return self.root / "systems" / system

    def systems(self) -> list[str]:
        base = self.root / "systems"
        return sorted(p.name for p in base.iterdir() if (p / "rollout.yaml").exists()) if base.exists() else []

    # -- RolloutStore port ---------------------------------------------------------------------
    def load(self, system: str) -> tuple[Rollout, RolloutStatus, Controls]:
        return self.rollout(system), self.status(system), self.controls(system)

    def save(self, system: str, status: RolloutStatus) -> None:
        atomic.write_text(self.dir(system) / "status.json", json.dumps(status.for_storage(), indent=1))

    # -- the pieces ----------------------------------------------------------------------------
    def rollout(self, system: str) -> Rollout:
        """The Rollout spec in effect. Parsed once per version of the file (YAML + validation cost
        ~2 ms; listing 50 systems for every open dashboard must not redo it): a write replaces the
        file, so its inode, time and size say when to parse again."""
        path = self.dir(system) / "rollout.yaml"
        try:
            st = path.stat()
        except FileNotFoundError:
            raise NotFound(f"system {system!r} is not deployed (modship deploy ...)") from None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        hit = self._parsed.get(system)
        if hit is not None and hit[0] == key:
            return hit[1]
        r = rollout_spec.from_document(yaml.safe_load(path.read_text()), source=str(path))
        self._parsed[system] = (key, r)
        return r

    def put_rollout(self, system: str, r: Rollout) -> None:
        atomic.write_text(self.dir(system) / "rollout.yaml", yaml.safe_dump(r.dump(), sort_keys=False))

    def status(self, system: str) -> RolloutStatus:
        path = self.dir(system) / "status.json"
        return RolloutStatus.from_storage(json.loads(path.read_text())) if path.exists() else RolloutStatus()

    def controls(self, system: str) -> Controls:
        path = self.dir(system) / "controls.json"
        return Controls(**json.loads(path.read_text())) if path.exists() else Controls()

    def command(self, system: str, **changes: Any) -> Controls:
        """Record a command (``abort=now``, ``paused=True``...) for the controller to consume."""
        from dataclasses import replace

        c = replace(self.controls(system), **changes)
        atomic.write_text(self.dir(system) / "controls.json", json.dumps(asdict(c)))
        return c

    def add_revision(self, system: str, lock: Lock, *, changed: list[str], overrides: list[str]) -> RevisionRecord:
        existing = self.revisions(system)
        for rec in existing:
            if rec.revision == lock.revision:
                return rec
        revisions.write(lock, self._lock_path(system, lock.revision))
        modules = sorted(lock.modules)
        rec = RevisionRecord(len(existing) + 1, lock.revision, modules, changed, time.time(), overrides)
        atomic.write_text(
            self.dir(system) / "revisions.json", json.dumps([asdict(r) for r in [*existing, rec]], indent=1)
        )
        return rec

    def revisions(self, system: str) -> list[RevisionRecord]:
        path = self.dir(system) / "revisions.json"
        return [RevisionRecord(**r) for r in json.loads(path.read_text())] if path.exists() else []

    def revision_by_number(self, system: str, number: int) -> RevisionRecord:
        for rec in self.revisions(system):
            if rec.number == number:
                return rec
        raise NotFound(f"{system} has no revision {number}")

    def lock(self, system: str, rev: str) -> Lock:
        path = self._lock_path(system, rev)
        if not path.exists():
            raise NotFound(f"revision {rev} of {system} is unknown")
        return revisions.load(path)

    def _lock_path(self, system: str, rev: str) -> Path:
        return self.dir(system) / "revisions" / f"{rev}.lock.yaml"

    def append_event(self, system: str, event: Event, *, now: float) -> None:
        line = json.dumps({"at": now, "reason": event.reason, "message": event.message, "warning": event.warning})
        with (self.dir(system) / "events.jsonl").open("a") as f:
            f.write(line + "\n")

    def append_request(
        self, system: str, what: str, message: str, *, now: float, actor: dict[str, Any], revision: str | None = None
    ) -> None:
        """A person's accepted request (``AbortRequested``...) with who asked and why, on the timeline."""
        row: dict[str, Any] = {"at": now, "reason": what, "message": message, "warning": False, "actor": actor}
        if revision is not None:
            row["revision"] = revision
        with (self.dir(system) / "events.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")

    def events(self, system: str, *, limit: int = 200) -> list[dict[str, Any]]:
        path = self.dir(system) / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(x) for x in path.read_text().splitlines()[-limit:] if x.strip()]

    def toggles(self, system: str) -> dict[str, dict[str, Any]]:
        path = self.dir(system) / "flags.json"
        return dict(json.loads(path.read_text())) if path.exists() else {}

    def toggle(self, system: str, flag: str, *, enabled: bool, percent: float) -> None:
        t = self.toggles(system)
        t[flag] = {"enabled": enabled, "percent": percent}
        atomic.write_text(self.dir(system) / "flags.json", json.dumps(t, indent=1))

    def fingerprint(self) -> dict[str, tuple[tuple[str, int, int], ...]]:
        """Per system, the names, times and sizes of its state files: changes whenever any of them
        is written (every write replaces or appends), without reading a byte."""
        base = self.root / "systems"
        out: dict[str, tuple[tuple[str, int, int], ...]] = {}
        if not base.exists():
            return out
        for d in os.scandir(base):
            try:
                files = [(e.name, (st := e.stat()).st_mtime_ns, st.st_size) for e in os.scandir(d.path) if e.is_file()]
            except OSError:  # the system is being deleted
                continue
            if any(f[0] == "rollout.yaml" for f in files):
                out[d.name] = tuple(sorted(f for f in files if f[0] != "controller.lock"))
        return out

    # -- one controller per system ---------------------------------------------------------------
    @contextlib.contextmanager
    def exclusive(self, system: str) -> Iterator[None]:
        """Hold the system's controller lock (released by the kernel even on kill -9)."""
        path = self.dir(system) / "controller.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise Conflict(f"another controller ({holder}) is acting on system {system!r}") from None
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()}")
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
