"""Shadow traffic: a copy of a request stable served, sent to the canary in the background after
the client has its answer. The canary's predicted labels are compared with stable's, then its
answer is discarded. At most ``MAX_IN_FLIGHT`` copies run at once: a slow canary must not pile up.
"""

from __future__ import annotations

import asyncio

from controller.adapters.router import fallback, wire
from controller.adapters.router.recorder import Recorder
from controller.adapters.router.route import Route
from controller.plan import answers

MAX_IN_FLIGHT = 256
HEADER = b"x-modship-mirror: 1\r\n"


class Mirrors:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, route: Route, req: wire.Request, stable: fallback.Attempt) -> None:
        """Copy ``req`` to the canary; ``stable``: the attempt whose answer the client got."""
        if len(self.tasks) >= MAX_IN_FLIGHT:
            return
        task = asyncio.get_running_loop().create_task(self._mirror(route, req, stable))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _mirror(self, route: Route, req: wire.Request, served: fallback.Attempt) -> None:
        assert route.canary is not None
        ok = served.resp is not None and 200 <= served.resp.status < 300 and served.resp.body
        stable = answers.answer(served.resp.body) if ok and served.resp is not None else None
        tried = await fallback.attempt(route.canary, req.encode(HEADER), req, route.timeout)
        answer = self.recorder.leg(req, fallback.Leg(route.canary_rev, "canary", tried), mirrored=True)
        if stable is not None and stable.labels and answer is not None and answer.labels:
            self.recorder.compared(route.canary_rev, disagreed=answer.labels != stable.labels)

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()
