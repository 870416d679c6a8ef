"""The test session leaves nothing behind: a check run when the session ends.

At the start the pytest process becomes a child subreaper, so every process the tests start stays
below it even when its parent dies (a SIGKILLed controller's units, BentoML workers in sessions of
their own); processes re-parented elsewhere are still caught when their command line, working
directory or environment point into this session's temporary directory. At the end, whatever of
those still lives (and did not exist before the session) is named, the run fails, and it is
stopped so the machine stays clean.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from controller.adapters import proctree, supervisor

SETTLE = 20.0  # processes told to stop at teardown may take a moment to go


@dataclass(frozen=True, slots=True)
class Leak:
    pid: int
    start: int
    cmd: str
    why: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.why}): {self.cmd}"


class Tracker:
    def __init__(self) -> None:
        self.root = os.getpid()
        self.before = {(s.pid, s.start) for s in proctree.table().values()}
        self.subreaper = False
        with contextlib.suppress(OSError):
            supervisor.prctl(supervisor.PR_SET_CHILD_SUBREAPER, 1)
            self.subreaper = True

    def leaks(self, basetemp: Path | None) -> list[Leak]:
        procs = proctree.table()
        below = proctree.descendants([self.root], procs)
        out = []
        for s in procs.values():
            if s.dead or s.pid == self.root or (s.pid, s.start) in self.before:
                continue
            why = "started by the test session" if s.pid in below else _points_into(s.pid, basetemp)
            if why:
                out.append(Leak(s.pid, s.start, proctree.cmdline(s.pid, limit=160) or "?", why))
        return out

    def settle(self, basetemp: Path | None) -> list[Leak]:
        """Leaks that are still there after a grace period (teardowns may still be finishing)."""
        deadline = time.monotonic() + SETTLE
        found = self.leaks(basetemp)
        while found and time.monotonic() < deadline:
            time.sleep(0.2)
            found = self.leaks(basetemp)
        return found


def _points_into(pid: int, basetemp: Path | None) -> str:
    if basetemp is None:
        return ""
    base = str(basetemp)

    def inside(text: str) -> bool:
        return text == base or f"{base}/" in text or f"{base} " in text or text.endswith(base)

    with contextlib.suppress(OSError):
        if inside(os.readlink(f"/proc/{pid}/cwd")):
            return "runs in the session's tmp dir"
    if inside(proctree.cmdline(pid, limit=100_000)):
        return "its command line names the session's tmp dir"
    with contextlib.suppress(OSError), open(f"/proc/{pid}/environ", "rb") as f:
        if any(inside(v.decode(errors="replace")) for v in f.read().split(b"\0")):
            return "its environment names the session's tmp dir"
    return ""


def stop(leaks: list[Leak]) -> None:
    proctree.terminate({x.pid: x.start for x in leaks}, grace=5.0)
