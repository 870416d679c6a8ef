"""Adaptive batching: concurrent calls share model calls, answers go back to their callers, and one
bad input does not fail its neighbours."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.pipeline.batching import Batcher


class Slow:
    """Doubles its input; the first call blocks until released, so the others must queue."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.sizes: list[int] = []

    def __call__(self, batch: Any) -> dict[str, Any]:
        if not self.sizes:
            self.release.wait(10)
        x = np.asarray(batch["x"])
        if (x < 0).any():
            raise ValueError("negative input")
        self.sizes.append(len(x))
        return {"y": x * 2}


def queued(b: Batcher, n: int, timeout: float = 10.0) -> None:
    """Poll (with a deadline) until ``n`` calls wait behind the running one."""
    deadline = time.monotonic() + timeout
    while len(b._queue) < n:
        assert time.monotonic() < deadline, f"{len(b._queue)} queued, expected {n}"
        time.sleep(0.005)


def test_calls_queued_while_the_model_is_busy_share_the_next_call() -> None:
    model = Slow()
    b = Batcher(model, max_batch=32)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(b, {"x": np.asarray([[0.0]])})
        rest = [pool.submit(b, {"x": np.asarray([[float(i)], [float(i)]])}) for i in range(1, 8)]
        queued(b, 7)
        model.release.set()
        assert first.result(10)["y"].tolist() == [[0.0]]
        for i, f in enumerate(rest, start=1):
            assert f.result(10)["y"].tolist() == [[2.0 * i], [2.0 * i]]  # each gets its own rows back
    assert model.sizes == [1, 14] and b.calls == 2


def test_max_batch_bounds_a_call() -> None:
    model = Slow()
    b = Batcher(model, max_batch=4)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(b, {"x": np.asarray([[0.0]])})
        rest = [pool.submit(b, {"x": np.asarray([[1.0], [1.0]])}) for _ in range(5)]
        queued(b, 5)
        model.release.set()
        first.result(10)
        assert all(f.result(10)["y"].shape == (2, 1) for f in rest)
    assert max(model.sizes) <= 4 and sum(model.sizes) == 11


def test_a_bad_input_fails_only_its_own_request() -> None:
    model = Slow()
    b = Batcher(model, max_batch=32)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(b, {"x": np.asarray([[0.0]])})
        good = pool.submit(b, {"x": np.asarray([[1.0]])})
        bad = pool.submit(b, {"x": np.asarray([[-1.0]])})
        queued(b, 2)
        model.release.set()
        first.result(10)
        assert good.result(10)["y"].tolist() == [[2.0]]
        with pytest.raises(ValueError, match="negative"):
            bad.result(10)


def test_an_idle_model_is_called_at_once() -> None:
    model = Slow()
    model.release.set()
    b = Batcher(model)
    assert b({"x": np.asarray([[3.0]])})["y"].tolist() == [[6.0]]
    assert b({"x": np.asarray([[4.0]])})["y"].tolist() == [[8.0]]
    assert model.sizes == [1, 1]


def test_with_two_slots_two_calls_run_at_once_and_the_rest_share_the_next() -> None:
    gate = threading.Event()
    running: list[int] = []
    sizes: list[int] = []
    lock = threading.Lock()

    def model(batch: Any) -> dict[str, Any]:
        x = np.asarray(batch["x"])
        with lock:
            running.append(len(x))
        if len(sizes) < 2:
            gate.wait(10)
        with lock:
            sizes.append(len(x))
        return {"y": x * 2}

    b = Batcher(model, max_batch=32, inflight=2)
    with ThreadPoolExecutor(8) as pool:
        first = [pool.submit(b, {"x": np.asarray([[float(i)]])}) for i in range(2)]
        deadline = time.monotonic() + 10
        while len(running) < 2:  # both slots busy, neither finished
            assert time.monotonic() < deadline, f"{len(running)} calls running, expected 2"
            time.sleep(0.005)
        rest = [pool.submit(b, {"x": np.asarray([[float(i)]])}) for i in range(2, 8)]
        queued(b, 6)
        gate.set()
        for i, f in enumerate(first + rest):
            assert f.result(10)["y"].tolist() == [[2.0 * i]]
    assert running[:2] == [1, 1] and sum(sizes) == 8 and b.calls == len(sizes) <= 4  # 6 queued: 1 or 2 calls


def test_sub_batches_bound_padding_and_rows() -> None:
    from controller.pipeline.kernels import PAD_WASTE, SUB_BATCH_ROWS, sub_batches

    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(10, 45, 60), [160, 255, 12]])
    runs = sub_batches(lengths)
    assert sorted(int(i) for r in runs for i in r) == list(range(len(lengths)))  # every row exactly once
    for r in runs:
        ls = lengths[r]
        assert 1 <= len(r) <= SUB_BATCH_ROWS
        assert len(r) == 1 or 1 - ls.sum() / (ls.max() * len(r)) <= PAD_WASTE
    assert len(sub_batches(np.asarray([30] * 40))) == 3  # equal lengths: cut by rows only
    assert [list(r) for r in sub_batches(np.asarray([7]))] == [[0]]


def test_cores_follow_a_cgroup_cpu_limit(tmp_path: Path) -> None:
    from controller.pipeline.batching import cores

    unlimited = cores(tmp_path / "absent")
    assert unlimited >= 1
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a limit of 1.5 CPUs
    assert cores(tmp_path / "cpu.max") == min(unlimited, 2)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cores(tmp_path / "cpu.max") == unlimited
