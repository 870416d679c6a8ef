"""Adaptive batching: concurrent calls share model calls, answers go back to their callers, and one
bad input does not fail its neighbours."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
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
