"""CPU accounting from ``/proc``: what the processes under test spend per request, and how much CPU
other processes took from the shared machine during a run.

Server CPU per request barely moves when the machine is busy, unlike latency and throughput, so it
is reported next to them; the foreign CPU (host busy time minus this benchmark's own process tree,
in cores) says how far a run's timings can be trusted.

The processes under test are measured to the nanosecond (each live thread's run time from
``/proc/PID/task/TID/schedstat``), plus what exited threads and reaped children used, in clock ticks:
a proxy spends a fraction of a millisecond per request, and a run of a few dozen requests on a busy
machine would otherwise round to zero or to one 10 ms tick.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TICK = os.sysconf("SC_CLK_TCK")


def _stats() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU seconds of the process and its reaped children)."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        # after the command: state ppid ... utime(14) stime(15) cutime(16) cstime(17), 1-based from pid
        out[int(entry.name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]) / TICK)
    return out


def _precise(pid: int, ticks: float) -> float:
    """CPU seconds of ``pid``: its live threads to the nanosecond; exited threads and reaped
    children from ``ticks`` (what ``_stats`` read) minus the live threads' ticks."""
    live_ns, live_ticks = 0, 0
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            with open(f"{task.path}/schedstat", "rb") as f:
                live_ns += int(f.read().split()[0])
            with open(f"{task.path}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            live_ticks += int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):  # exited meanwhile, or no schedstat: ticks only
        return ticks
    return live_ns / 1e9 + max(0.0, ticks - live_ticks / TICK)


def tree_cpu(roots: Iterable[int], stats: dict[int, tuple[int, float]] | None = None) -> float:
    """CPU seconds used so far by ``roots`` and all their live descendants (and reaped children)."""
    stats = _stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0.0, [p for p in roots if p in stats], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += _precise(pid, stats[pid][1])
        todo.extend(children.get(pid, []))
    return total


def busy() -> float:
    """CPU seconds the whole host has been busy (all cores), from ``/proc/stat``."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICK  # user nice system idle iowait irq softirq steal


@dataclass(frozen=True, slots=True)
class Reading:
    busy: float  # host, all cores
    ours: float  # this process and everything it started
    target: float  # the processes under test
    entry: float  # the first of them: the one the load is sent to (a proxy, or the service itself)


def read(target_pids: Sequence[int]) -> Reading:
    stats = _stats()
    # ours: this process's tree and the targets (each counted once: a target outside the tree, like a
    # pod's process, is no "other program")
    return Reading(
        busy(),
        tree_cpu([os.getpid(), *target_pids], stats),
        tree_cpu(target_pids, stats),
        tree_cpu(target_pids[:1], stats),
    )
