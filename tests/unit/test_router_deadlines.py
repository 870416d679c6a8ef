"""Request deadlines of the router's upstream connections: one timer per event loop, due at the
earliest deadline in flight, so that requests answered in time never wake the process."""

from __future__ import annotations

import asyncio

from controller.adapters.router import upstream
from controller.adapters.router.upstream import Connection, Deadlines, UpstreamError
from tests.support.transports import NullTransport

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"


def _sent(timeout: float, got: list[object]) -> Connection:
    conn = Connection()
    conn.connection_made(NullTransport())  # type: ignore[arg-type]
    conn.request(b"POST /predict HTTP/1.1\r\n\r\n", timeout, False, lambda r, e: got.append(e if r is None else r))
    return conn


def test_a_request_without_an_answer_times_out_soon_after_its_deadline() -> None:
    async def go() -> tuple[list[object], float]:
        loop = asyncio.get_running_loop()
        got: list[object] = []
        t0 = loop.time()
        _sent(0.05, got)
        while not got and loop.time() - t0 < 5:
            await asyncio.sleep(0.005)
        return got, loop.time() - t0

    got, took = asyncio.run(go())
    assert len(got) == 1 and isinstance(got[0], UpstreamError) and got[0].kind == "timeout"
    assert 0.05 <= took < 0.05 + upstream.SLACK_S + 0.5  # not before its deadline, and not long after


def test_requests_answered_in_time_leave_one_timer_due_at_the_first_deadline() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        watch = Deadlines.of(loop)
        got: list[object] = []
        first = _sent(30.0, got)
        tick = watch._tick
        assert tick is not None and abs(tick.when() - (first.deadline + upstream.SLACK_S)) < 1e-3
        for _ in range(50):  # answered in time, one after another: the timer stays as it was armed
            conn = _sent(30.0, got)
            conn.data_received(OK)
            assert watch._tick is tick
        first.data_received(OK)
        assert len(got) == 51 and not watch.flight
        assert tick.when() - loop.time() > 25  # nothing wakes the loop before then
        tick.cancel()

    asyncio.run(go())


def test_a_shorter_deadline_brings_the_timer_forward_and_later_ones_are_checked_after_it() -> None:
    async def go() -> tuple[list[object], list[object], float]:
        loop = asyncio.get_running_loop()
        watch = Deadlines.of(loop)
        long: list[object] = []
        short: list[object] = []
        _sent(30.0, long)
        _sent(0.05, short)
        assert watch._tick is not None and watch._tick.when() - loop.time() < 0.05 + upstream.SLACK_S + 1e-3
        t0 = loop.time()
        while not short and loop.time() - t0 < 5:
            await asyncio.sleep(0.005)
        assert watch._tick is not None
        due = watch._tick.when() - loop.time()  # re-armed for the request still in flight
        watch._tick.cancel()
        return long, short, due

    long, short, due = asyncio.run(go())
    assert not long and len(short) == 1 and isinstance(short[0], UpstreamError)
    assert due > 25
