"""Adaptive batching inside a composed service: concurrent requests share one model call.

A ``Batcher`` wraps the kernel of a step whose module is ``batchable``. It adapts to load the way
BentoML's adaptive batching does, without a timer in the common case: while a model call slot is
free a call runs at once (no added latency at low load); while every slot is busy, calls queue, and
the next model call takes everything queued (up to ``max_batch`` rows) in one batch. ``inflight``
model calls may run at once (the engine gives one per core: a model run single-threaded per call
leaves a core idle otherwise). ``max_latency_ms`` > 0 also waits that long for company before an
idle call runs.

There is no dispatcher thread: a waiting caller whose request is still queued runs the batch for
everyone when a slot is free (leaders and followers on one condition variable), so a batch costs no
thread hop. If a shared call fails, each request of it is run alone, so one bad input cannot fail
its neighbours.

Why not BentoML's own batching: it batches at an API boundary between services, which would put
every batchable step behind a socket and a pickle per request; this batches in-process, per step.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.pipeline import values
from controller.pipeline.errors import Batch, Kernel


def cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPU cores this process may use (its affinity, capped by a cgroup v2 CPU quota, as a
    container's CPU limit sets): model calls in flight at once, each single-threaded."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            n = min(n, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, n)


@dataclass
class _Item:
    batch: Batch
    rows: int
    done: bool = False
    taken: bool = False  # in a batch being run
    out: dict[str, Any] | None = None
    error: BaseException | None = None
    queued: float = field(default_factory=time.perf_counter)

    def result(self) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        assert self.out is not None
        return self.out


class Batcher:
    """A kernel whose concurrent callers share model calls (see the module docstring)."""

    def __init__(self, kernel: Kernel, *, max_batch: int = 32, max_latency_ms: float = 0.0, inflight: int = 1) -> None:
        self.kernel, self.max_batch, self.max_latency = kernel, max_batch, max_latency_ms / 1000
        self.inflight = max(1, inflight)
        self._cond = threading.Condition()
        self._queue: list[_Item] = []
        self._running = 0  # model calls in flight
        self.calls = 0  # model calls made, and rows they carried: the batching actually achieved
        self.rows = 0

    def __call__(self, batch: Batch) -> dict[str, Any]:
        item = _Item(batch, values.size(next(iter(batch.values()))))
        with self._cond:
            self._queue.append(item)
            while not item.done:
                if item.taken or self._running >= self.inflight:
                    self._cond.wait()
                    continue
                self._running += 1
                if self.max_latency and len(self._queue) == 1:
                    self._cond.wait(max(0.0, self.max_latency - (time.perf_counter() - item.queued)))
                take = self._take()
                if not take:  # another leader took everything while this one waited for company
                    self._running -= 1
                    continue
                self._cond.release()
                try:
                    self._run(take)
                finally:
                    self._cond.acquire()
                    for it in take:
                        it.done = True
                    self._running -= 1
                    self._cond.notify_all()
        return item.result()

    def _take(self) -> list[_Item]:
        take: list[_Item] = []
        rows = 0
        while self._queue and (not take or rows + self._queue[0].rows <= self.max_batch):
            it = self._queue.pop(0)
            it.taken = True
            take.append(it)
            rows += it.rows
        return take

    def _run(self, take: list[_Item]) -> None:
        self.calls += 1
        self.rows += sum(it.rows for it in take)
        if len(take) == 1:
            self._alone(take[0])
            return
        try:
            joined = {port: values.concat([it.batch[port] for it in take]) for port in take[0].batch}
            out = self.kernel(joined)
            parts = {port: values.split(v, [it.rows for it in take]) for port, v in out.items()}
        except Exception:
            for it in take:  # one bad input must not fail its neighbours: each alone
                self._alone(it)
            return
        for i, it in enumerate(take):
            it.out = {port: p[i] for port, p in parts.items()}

    def _alone(self, it: _Item) -> None:
        try:
            it.out = self.kernel(it.batch)
        except BaseException as exc:
            it.error = exc
