"""The operator's scheduler on a fake clock: due times, wakes, one cycle of a key at a time, the gate."""

from __future__ import annotations

import asyncio

from controller.apply.scheduler import IDLE_POLL, Scheduler


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def scheduler(clock: Clock, *, gate: list[bool] | None = None) -> Scheduler[str]:
    open_ = gate if gate is not None else [True]
    return Scheduler(lambda key: None, workers=2, gate=lambda: open_[0], clock=clock)


def test_a_key_runs_when_due_and_not_before() -> None:
    clock = Clock()
    s = scheduler(clock)
    s.wake("a", clock.t + 5)
    assert s.take() == [] and s.next_in() == IDLE_POLL  # capped: the heap is looked at every second
    clock.t += 4.9
    assert s.take() == []
    assert abs(s.next_in() - 0.1) < 1e-9
    clock.t += 0.1
    assert s.take() == ["a"]
    assert s.take() == []


def test_an_earlier_wake_supersedes_a_later_one_and_not_the_reverse() -> None:
    clock = Clock()
    s = scheduler(clock)
    s.wake("a", clock.t + 30)
    s.wake("a", clock.t + 2)
    s.wake("a", clock.t + 10)  # later than what is due already: ignored
    clock.t += 2
    assert s.take() == ["a"]
    clock.t += 30
    assert s.take() == []  # the superseded entry does not run again


def test_due_keys_start_in_order() -> None:
    clock = Clock()
    s = scheduler(clock)
    s.wake("b", clock.t + 2)
    s.wake("a", clock.t + 1)
    s.wake("c", clock.t + 1)
    clock.t += 3
    assert s.take() == ["a", "c", "b"]


def test_a_wake_while_running_runs_it_again_right_after() -> None:
    clock = Clock()
    s = scheduler(clock)
    s.wake("a")
    assert s.take() == ["a"]
    s.wake("a")  # a change arrives mid-cycle: no second cycle at once...
    assert s.take() == []
    clock.t += 3
    s.finished("a", start=clock.t - 3, delay=60)  # ...but right after, not 60 s later
    assert s.take() == ["a"]


def test_finished_requeues_after_the_delay_from_the_cycle_start() -> None:
    clock = Clock()
    s = scheduler(clock)
    s.wake("a")
    assert s.take() == ["a"]
    start = clock.t
    clock.t += 2
    s.finished("a", start=start, delay=5)
    clock.t = start + 4.99
    assert s.take() == []
    clock.t = start + 5
    assert s.take() == ["a"]
    s.finished("a", start=clock.t, delay=None)  # None: only a change wakes it
    clock.t += 1e6
    assert s.take() == []


def test_forget_drops_what_is_due() -> None:
    clock = Clock()
    s = scheduler(clock)
    s.wake("a", clock.t + 1)
    s.forget("a")
    clock.t += 2
    assert s.take() == []


def test_nothing_starts_while_the_gate_is_closed() -> None:
    clock = Clock()
    gate = [False]
    s = scheduler(clock, gate=gate)
    s.wake("a")
    clock.t += 10
    assert s.take() == [] and s.next_in() == IDLE_POLL
    gate[0] = True
    assert s.take() == ["a"]


def test_run_reconciles_in_the_pool_and_requeues() -> None:
    """The loop itself, with the real clock: a cycle that asks to run again soon does."""
    runs: list[str] = []
    done = asyncio.Event()
    loops: list[asyncio.AbstractEventLoop] = []

    def run_one(key: str) -> float | None:  # in a worker thread
        runs.append(key)
        if len(runs) == 3:
            loops[0].call_soon_threadsafe(done.set)
        return 0.01 if len(runs) < 3 else None

    async def main() -> None:
        loops.append(asyncio.get_running_loop())
        s: Scheduler[str] = Scheduler(run_one, workers=2, gate=lambda: True)
        task = asyncio.create_task(s.run())
        await asyncio.sleep(0)
        s.wake("a")
        try:
            await asyncio.wait_for(done.wait(), timeout=5)
        finally:
            task.cancel()
            s.close()

    asyncio.run(main())
    assert runs == ["a", "a", "a"]
