"""Exponential backoff: the one formula modship waits by between attempts (in-call retries of a
library use tenacity with the same shape)."""

from __future__ import annotations


def delay(failures: int, *, first: float, cap: float, doublings: int = 16) -> float:
    """Seconds to wait after ``failures`` failures in a row: 0 before any, then ``first``, twice
    that, four times... doubling at most ``doublings`` times and never above ``cap``."""
    if failures <= 0:
        return 0.0
    return min(cap, first * 2.0 ** min(failures - 1, doublings))
