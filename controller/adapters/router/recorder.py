"""What the router records after each answer: the telemetry ring (``controller.plan.telemetry``,
read by the built-in metrics provider) and the cumulative Prometheus counters. Nothing is logged
per request.

Routed requests are recorded in batches (``later``): each is stamped when answered and kept until
``flush``, which runs every ``FLUSH_S`` seconds, after ``BATCH`` requests, and before anything reads
the telemetry or the counters (the admin API), so readers never see less than was answered. One
pass over many requests runs with warm caches; one request at a time, between two idle waits of
the event loop, costs several times more CPU.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from controller.adapters.router import wire
from controller.adapters.router.fallback import Attempt, Leg, kind
from controller.adapters.router.metrics import Counters
from controller.plan import answers, telemetry

FLUSH_S: Final = 0.25
BATCH: Final = 256


class Recorder:
    def __init__(self, telemetry: telemetry.Telemetry, counters: Counters) -> None:
        self.telemetry = telemetry
        self.counters = counters
        # attempts to record at the next flush, stamped with ``time.monotonic()``: a ``Leg``, or for
        # the common case (one attempt, answered, as routed; appended by ``Router._fast_done``) its
        # revision, role, response and latency, the ``Leg`` made at the flush
        self.pending: list[tuple[float, wire.Request, Leg | tuple[str, str, wire.Response, float]]] = []
        self.timer: asyncio.TimerHandle | None = None

    def later(self, req: wire.Request, leg: Leg) -> None:
        """Record one routed attempt at the next ``flush``."""
        self.pending.append((time.monotonic(), req, leg))
        self.due()

    def due(self) -> None:
        """After an append to ``pending``: flush a full batch, or arm the timer."""
        if len(self.pending) >= BATCH:
            self.flush()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        """Record every attempt still pending."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        pending, self.pending = self.pending, []
        wall = time.time() - time.monotonic()  # stamps are monotonic (one clock read per request): to wall time
        for at, req, made in pending:
            if isinstance(made, Leg):
                self.leg(req, made, now=at + wall)
            else:
                revision, role, resp, latency = made
                self.leg(req, Leg(revision, role, Attempt(resp, kind(resp), latency)), now=at + wall)

    def leg(
        self, req: wire.Request, leg: Leg, *, mirrored: bool = False, now: float | None = None
    ) -> answers.Answer | None:
        """Record one attempt now; what its answer said (None: no readable 2xx answer)."""
        now = time.time() if now is None else now
        revision, role, tried, fallback, _ = leg
        resp, kind, latency = tried.resp, tried.kind, tried.latency
        answer = None
        if resp is not None and 200 <= resp.status < 300 and resp.body:
            answer = answers.answer(resp.body)
        self.telemetry.record(revision, role).add(
            now,
            latency,
            error=kind is not None,
            fallback=fallback,
            mirrored=mirrored,
            lengths=req.lengths(),
            answer=answer,
        )
        c = self.counters
        if kind is not None:
            c.inc(c.upstream_errors, (revision, kind))
        if mirrored:
            c.inc(c.mirrored, revision)
            return answer
        c.inc(c.requests, (revision, role, tried.code))
        if latency is not None:
            c.observe(revision, role, latency)
        if fallback:
            c.inc(c.fallbacks, revision)
        return answer

    def compared(self, revision: str, *, disagreed: bool) -> None:
        """A mirrored answer compared with stable's."""
        self.telemetry.record(revision, "canary").compared(time.time(), disagreed=disagreed)
        if disagreed:
            self.counters.inc(self.counters.disagreements, revision)
