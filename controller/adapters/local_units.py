"""Units of the local runtime: a revision's ``bentoml serve`` tree, or a router, each run under its
own supervisor (``controller.adapters.supervisor``, which explains the design).

A unit is named by its supervisor's identity ``(pid, start)`` and its record file; both are
persisted in ``runtime.json`` so a controller restarted after SIGKILL adopts it. This module
starts units, tells whether they run, stops them (together, in parallel), and after a unit ended
collects how (``Crash``) and stops whatever it left behind.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.adapters import proctree, supervisor

GRACE = 10.0  # SIGTERM -> SIGKILL, inside the supervisor
# processes a unit's own code restarts when they die: a step's isolated module worker
TOLERATED = ("controller.pipeline.worker",)
MARGIN = 5.0  # then the controller kills the supervisor itself


@dataclass
class Proc:
    """One unit as persisted in ``runtime.json`` (``pid``/``start``: its supervisor)."""

    revision: str  # the revision, or "router"
    pid: int
    port: int
    started: float
    restarts: list[float]
    next_start: float = 0.0  # backoff: not before this time (monotonic clock of this controller)
    start: int = 0  # the supervisor's start time in clock ticks (0: unknown, a pid-only identity)
    record: str = ""  # the supervisor's record file
    reported: int = 0  # crashes its supervisor survived (restart mode) that were reported already

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True, slots=True)
class Crash:
    """How a unit ended without being asked to: which process died and how."""

    unit: str
    process: str  # server, worker, router, supervisor, or the program's name
    pid: int | None
    exit_code: int | None
    signal: str | None  # e.g. SIGKILL; both None: unknown
    at: float
    leftovers: int = 0  # processes still alive that the controller had to stop

    @property
    def how(self) -> str:
        if self.signal:
            return f"was killed by {self.signal}"
        if self.exit_code is not None:
            return f"exited with status {self.exit_code}"
        return "exited (status unknown)"

    def dump(self) -> dict[str, Any]:
        return {"unit": self.unit, "process": self.process, "pid": self.pid, "exitCode": self.exit_code,
                "signal": self.signal, "at": self.at}  # fmt: skip


class Units:
    """Start, watch and stop supervised units; ``units_dir`` holds their record files."""

    def __init__(self, units_dir: Path, *, grace: float = GRACE) -> None:
        self.dir, self.grace = units_dir, grace
        self.dir.mkdir(parents=True, exist_ok=True)
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # supervisors this controller started

    def spawn(
        self, name: str, cmd: list[str], env: dict[str, str], log: Path, *, listen: str | None = None
    ) -> tuple[int, int, str]:
        """Start ``cmd`` as unit ``name``; returns the supervisor's pid, start time and record path.
        With ``listen`` (HOST:PORT) the supervisor holds that listening socket and restarts its main
        process in place after a crash (the router: clients wait in the backlog meanwhile)."""
        record = self.dir / f"{name}-{uuid.uuid4().hex[:8]}.json"
        with log.open("ab") as logf:
            proc = subprocess.Popen(
                supervisor.command(
                    record, cmd, grace=self.grace, restart=listen is not None, listen=listen, tolerate=TOLERATED
                ),
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self._children[proc.pid] = proc
        return proc.pid, proctree.start_of(proc.pid) or 0, str(record)

    def running(self, p: Proc) -> bool:
        child = self._children.get(p.pid)
        if child is not None and child.poll() is not None:
            return False
        if p.start:
            return proctree.same(p.pid, p.start)
        s = proctree.read(p.pid)
        return s is not None and not s.dead

    def stop(self, units: list[Proc]) -> None:
        """Stop units together: SIGTERM every supervisor (each stops its tree), wait, then make sure."""
        for p in units:
            if self.running(p):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace + MARGIN
        while time.monotonic() < deadline and any(self.running(p) for p in units):
            time.sleep(0.05)
        for p in units:
            if self.running(p):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(p.pid, signal.SIGKILL)
            self._leftovers(supervisor.read_record(Path(p.record)) if p.record else None, grace=1.0)
            self._forget(p)

    def collect(self, p: Proc) -> Crash | None:
        """The unit ended: stop what it left behind and say how it ended (None: already collected)."""
        rec = supervisor.read_record(Path(p.record)) if p.record else None
        child = self._children.get(p.pid)
        status = child.returncode if child is not None else None
        if rec is None:
            self._forget(p)
            return None
        leftovers = self._leftovers(rec, grace=self.grace)
        end = rec.get("exit") or {}
        if end.get("reason") == "crashed":
            crash = _crash(p.revision, end, leftovers)
        else:  # the supervisor itself was killed, or stopped by someone else
            sig = end.get("signal") or (signal.Signals(-status).name if status is not None and status < 0 else None)
            code = status if status is not None and status >= 0 else None
            crash = Crash(p.revision, "supervisor", p.pid, code, sig, time.time(), leftovers)
        self._forget(p)
        return crash

    def restarted(self, p: Proc) -> list[Crash]:
        """Crashes a running unit's supervisor survived by restarting in place, not reported yet."""
        rec = supervisor.read_record(Path(p.record)) if p.record else None
        count = int((rec or {}).get("crashCount", 0))
        if count <= p.reported:
            return []
        fresh = (rec or {}).get("crashes", [])[-(count - p.reported) :]
        p.reported = count
        return [_crash(p.revision, c, 0) for c in fresh]

    def _leftovers(self, rec: dict[str, Any] | None, *, grace: float) -> int:
        """Stop members of a record that outlived their supervisor, and everything below them."""
        members = {int(m["pid"]): int(m["start"]) for m in (rec or {}).get("members") or []}
        alive = {pid: st for pid, st in members.items() if proctree.same(pid, st)}
        if not alive:
            return 0
        below = proctree.descendants(alive)
        targets = {**alive, **{pid: s.start for pid, s in below.items() if not s.dead}}
        proctree.terminate(targets, grace=grace)
        return len(targets)

    def _forget(self, p: Proc) -> None:
        child = self._children.pop(p.pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(0.5)
        if p.record:
            Path(p.record).unlink(missing_ok=True)

    def strays(self, known: set[str]) -> int:
        """Stop units whose records no adopted unit names (a controller killed between starting a
        unit and saving ``runtime.json``); returns how many processes were stopped."""
        stopped = 0
        for path in self.dir.glob("*.json"):
            if str(path) in known:
                continue
            rec = supervisor.read_record(path) or {}
            pid, start = int(rec.get("pid", 0)), int(rec.get("start", 0))
            if pid and proctree.same(pid, start):
                proctree.terminate({pid: start}, grace=self.grace + MARGIN)
                stopped += 1
            stopped += self._leftovers(rec, grace=self.grace)
            path.unlink(missing_ok=True)
        return stopped

    def members(self, p: Proc) -> list[dict[str, Any]]:
        """The unit's processes now: the supervisor and everything below it."""
        out = [{"pid": p.pid, "process": "supervisor"}]
        rec = supervisor.read_record(Path(p.record)) if p.record else None
        main = {int(m["pid"]) for m in (rec or {}).get("members") or [] if m.get("main")}
        for pid, s in sorted(proctree.descendants([p.pid]).items()):
            if not s.dead:  # named from what it runs now (a record may have seen it before its exec)
                member = {"cmd": proctree.cmdline(pid), "main": pid in main if main else s.ppid == p.pid}
                out.append({"pid": pid, "process": _name(p.revision, member)})
        return out


def usage(units: list[Proc]) -> tuple[int, int]:
    """Process count and total RSS (bytes) of the given units: supervisors and their trees."""
    procs = proctree.table()
    roots = [p.pid for p in units if p.pid in procs and not procs[p.pid].dead]
    tree = {**{r: procs[r] for r in roots}, **proctree.descendants(roots, procs)}
    living = [s for s in tree.values() if not s.dead]
    return len(living), sum(s.rss for s in living)


def _crash(unit: str, end: dict[str, Any], leftovers: int) -> Crash:
    """A crash from a supervisor's record."""
    who = end.get("process") or {}
    at = float(end.get("at") or time.time())
    return Crash(unit, _name(unit, who), who.get("pid"), end.get("exitCode"), end.get("signal"), at, leftovers)


def _name(unit: str, member: dict[str, Any]) -> str:
    cmd = str(member.get("cmd") or "")
    if member.get("main"):
        return "router" if unit == "router" else "server"
    if "_bentoml_impl.worker" in cmd:
        return "worker"
    argv = cmd.split()
    if len(argv) >= 3 and argv[1] == "-m":
        return argv[2]
    return Path(argv[0]).name if argv else "process"


class ExitWatch:
    """Calls ``on_exit`` (from its own thread) as soon as a unit's supervisor ends, so the unit is
    restarted at once instead of at the controller's next periodic check. Uses pidfds, which work
    for processes that are not our children (units adopted after a controller restart)."""

    def __init__(self, units: Callable[[], list[Proc]], on_exit: Callable[[], None]) -> None:
        self.units, self.on_exit = units, on_exit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modship-unit-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fds: dict[tuple[int, int], int] = {}
        fired: set[tuple[int, int]] = set()
        try:
            while not self._stop.is_set():
                wanted = {(p.pid, p.start) for p in self.units()}
                for key in [k for k in fds if k not in wanted]:
                    os.close(fds.pop(key))
                ended = False
                for key in wanted - fds.keys() - fired:
                    try:
                        fd = os.pidfd_open(key[0])
                    except OSError:  # gone already
                        fired.add(key)
                        ended = True
                        continue
                    fds[key] = fd
                    if key[1] and not proctree.same(*key):  # the pid names another process now
                        fired.add(key)
                        ended = True
                ready, _, _ = select.select([fd for k, fd in fds.items() if k not in fired], [], [], 1.0)
                for key in [k for k, fd in fds.items() if fd in ready]:
                    fired.add(key)
                    ended = True
                fired &= wanted
                if ended:
                    self.on_exit()
        finally:
            for fd in fds.values():
                os.close(fd)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
