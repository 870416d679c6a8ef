"""Change notifications for live views (the dashboard's server-sent events).

One ``Watch`` per server polls a cheap *fingerprint* of every system (a backend's choice: file
times and sizes for the local store, the resource's state on Kubernetes) and tells each
subscriber which systems changed. It polls only while someone listens, and once for all of them,
so N open dashboards cost what one does; a subscriber learns of a change within one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Hashable, Mapping

import anyio

Fingerprint = Callable[[], Mapping[str, Hashable]]


class Watch:
    def __init__(self, fingerprint: Fingerprint, *, interval: float = 0.25) -> None:
        self._fingerprint = fingerprint
        self.interval = interval
        self._queues: set[asyncio.Queue[list[str]]] = set()
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[list[str]]]:
        """A queue that receives the sorted names of the systems that changed (a system that
        appears or disappears counts as changed)."""
        q: asyncio.Queue[list[str]] = asyncio.Queue(maxsize=64)
        self._queues.add(q)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll())
        try:
            yield q
        finally:
            self._queues.discard(q)

    async def _poll(self) -> None:
        before = dict(await anyio.to_thread.run_sync(self._fingerprint))
        while self._queues:
            await asyncio.sleep(self.interval)
            try:
                now = dict(await anyio.to_thread.run_sync(self._fingerprint))
            except Exception:  # a backend hiccup (a file replaced mid-read, the API server away): next time
                continue
            changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
            before = now
            if changed:
                for q in list(self._queues):
                    with contextlib.suppress(asyncio.QueueFull):  # a stalled reader: it reloads everything anyway
                        q.put_nowait(changed)
        self._task = None
