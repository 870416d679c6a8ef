"""When each object is reconciled: due times on an injected clock, and a bounded pool of workers.

A watch event only *wakes* a key; the scheduler runs one cycle per key when it is due, at the time
the last cycle asked for (``run_one`` returns seconds until the next, None: only on a change) or at
once when woken; never two cycles of one key at once (a wake during a cycle runs it again right
after). ``gate`` says whether this replica may act at all (the lease). The bookkeeping (``wake``,
``take``, ``finished``) is synchronous and clock-driven, so tests drive it with a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

log = logging.getLogger("modship.scheduler")
K = TypeVar("K", bound=Hashable)
FAILED_DELAY = 10.0  # a cycle that raised runs again after this long
IDLE_POLL = 1.0  # seconds between looks at the heap when nothing is due sooner


class Scheduler(Generic[K]):
    """Due times per key and a bounded pool running the cycles."""

    def __init__(
        self,
        run_one: Callable[[K], float | None],
        *,
        workers: int,
        gate: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run_one, self._gate, self._clock = run_one, gate, clock
        self._heap: list[tuple[float, int, K]] = []
        self._seq = 0  # ties in the heap: first woken, first run (keys need not be ordered)
        self._due: dict[K, float] = {}
        self._running: set[K] = set()
        self._again: set[K] = set()
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None
        self._wakeup: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def wake(self, key: K, at: float | None = None) -> None:
        """Reconcile ``key`` at ``at`` (default now), unless it is due earlier already."""
        now = self._clock()
        at = now if at is None else at
        if key in self._running and at <= now:
            self._again.add(key)
            return
        if self._due.get(key, float("inf")) <= at:
            return
        self._due[key] = at
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, key))
        if self._wakeup is not None:
            self._wakeup.set()

    def forget(self, key: K) -> None:
        self._due.pop(key, None)
        self._again.discard(key)

    def take(self) -> list[K]:
        """The keys due now that may start (marked running); none while the gate is closed."""
        if not self._gate():
            return []
        now, out = self._clock(), []
        while self._heap and self._heap[0][0] <= now:
            at, _, key = heapq.heappop(self._heap)
            if self._due.get(key) != at:
                continue  # superseded
            del self._due[key]
            if key in self._running:
                self._again.add(key)
                continue
            self._running.add(key)
            out.append(key)
        return out

    def finished(self, key: K, *, start: float, delay: float | None) -> None:
        """A cycle of ``key`` begun at ``start`` ended, asking to run again ``delay`` s after it began."""
        self._running.discard(key)
        if key in self._again:
            self._again.discard(key)
            self.wake(key)
        elif delay is not None:
            self.wake(key, start + delay)

    def next_in(self) -> float:
        """Seconds until the next look at the heap."""
        if not self._heap or not self._gate():
            return IDLE_POLL
        return max(0.0, min(self._heap[0][0] - self._clock(), IDLE_POLL))

    async def run(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="reconcile")
        self._slots = asyncio.Semaphore(self._workers)
        self._wakeup = wakeup = asyncio.Event()
        loop = asyncio.get_running_loop()
        while True:
            for key in self.take():
                task = loop.create_task(self._one(key))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            nxt = self.next_in()
            wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), timeout=nxt)

    async def _one(self, key: K) -> None:
        assert self._slots is not None
        async with self._slots:
            start = self._clock()
            try:
                delay = await asyncio.get_running_loop().run_in_executor(self._pool, self._run_one, key)
            except Exception:
                log.exception("%s: reconcile failed", key)
                delay = FAILED_DELAY
        self.finished(key, start=start, delay=delay)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
