"""What the router records after each answer: the telemetry ring (``controller.plan.telemetry``,
read by the built-in metrics provider) and the cumulative Prometheus counters. Nothing is logged
per request.
"""

from __future__ import annotations

import time

from controller.adapters.router import wire
from controller.adapters.router.fallback import Leg
from controller.adapters.router.metrics import Counters
from controller.plan import telemetry


class Recorder:
    def __init__(self, telemetry: telemetry.Telemetry, counters: Counters) -> None:
        self.telemetry = telemetry
        self.counters = counters

    def leg(self, req: wire.Request, leg: Leg, *, mirrored: bool = False) -> telemetry.Answer | None:
        """Record one attempt; what its answer said (None: no readable 2xx answer)."""
        now = time.time()
        revision, role, tried, fallback, _ = leg
        resp, kind, latency = tried.resp, tried.kind, tried.latency
        rec = self.telemetry.record(revision, role)
        rec.request(now, latency=latency, error=kind is not None, fallback=fallback, mirrored=mirrored)
        lengths = req.lengths()
        if lengths:
            rec.inputs(now, lengths)
        answer = None
        if resp is not None and 200 <= resp.status < 300 and resp.body:
            answer = telemetry.answer(resp.body)
            if answer is not None:
                rec.answered(now, answer)
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
