"""Processes as seen through ``/proc`` (Linux): identity, descendants, memory, exit statuses.

A pid alone is no identity (pids are reused): a process is ``(pid, start)``, ``start`` being its
start time in clock ticks since boot. A zombie's ``/proc/PID/stat`` still carries its exit status
(as ``waitpid`` would report it) until its parent reaps it, which is how the supervisor learns how
a grandchild died. Standard library only: the supervisor imports this module.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

PAGE = os.sysconf("SC_PAGE_SIZE")
DEAD = ("Z", "X", "x")


@dataclass(frozen=True, slots=True)
class Stat:
    pid: int
    ppid: int
    state: str  # R, S, D, T, Z (zombie), X (dead) …
    start: int  # clock ticks since boot: (pid, start) names one process
    rss: int  # bytes
    exit_code: int  # a zombie's wait status; 0 for the living

    @property
    def dead(self) -> bool:
        return self.state in DEAD


def read(pid: int) -> Stat | None:
    """The process' stat line, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return Stat(
        pid=pid,
        ppid=int(fields[1]),
        state=fields[0],
        start=int(fields[19]),
        rss=int(fields[21]) * PAGE,
        exit_code=int(fields[49]) if len(fields) > 49 else 0,
    )


def start_of(pid: int) -> int | None:
    s = read(pid)
    return None if s is None or s.dead else s.start


def same(pid: int, start: int) -> bool:
    """True while the process ``(pid, start)`` lives (a zombie counts as gone)."""
    s = read(pid)
    return s is not None and not s.dead and s.start == start


def table() -> dict[int, Stat]:
    out: dict[int, Stat] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (s := read(int(name))) is not None:
            out[s.pid] = s
    return out


def descendants(roots: Iterable[int], procs: dict[int, Stat] | None = None) -> dict[int, Stat]:
    """Every process below ``roots`` (not the roots themselves), zombies included."""
    procs = table() if procs is None else procs
    children: dict[int, list[int]] = {}
    for s in procs.values():
        children.setdefault(s.ppid, []).append(s.pid)
    out: dict[int, Stat] = {}
    todo = [c for r in roots for c in children.get(r, [])]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out[pid] = procs[pid]
            todo.extend(children.get(pid, []))
    return out


def cmdline(pid: int, *, limit: int = 240) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:limit]
    except OSError:
        return ""


def describe(wait_status: int | None) -> dict[str, int | str | None]:
    """``{"exitCode": n, "signal": None}`` or ``{"exitCode": None, "signal": "SIGKILL"}``
    (both None: unknown)."""
    if wait_status is None:
        return {"exitCode": None, "signal": None}
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        with contextlib.suppress(ValueError):
            return {"exitCode": None, "signal": signal.Signals(sig).name}
        return {"exitCode": None, "signal": str(sig)}
    return {"exitCode": os.waitstatus_to_exitcode(wait_status), "signal": None}


def terminate(pids: dict[int, int], *, grace: float) -> list[int]:
    """SIGTERM every ``pid: start`` that still lives, SIGKILL what is left after ``grace`` seconds.
    Returns the pids that had to be killed. For processes that are not our children (adopted
    units); children are reaped by whoever waits for them."""
    for pid, start in pids.items():
        if same(pid, start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(same(p, s) for p, s in pids.items()):
        time.sleep(0.05)
    killed = [p for p, s in pids.items() if same(p, s)]
    for pid in killed:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0  # SIGKILL is not instantaneous either
    while time.monotonic() < deadline and any(same(p, pids[p]) for p in killed):
        time.sleep(0.02)
    return killed
