"""Deliberate faults around a kernel (``runtime.faults``), for chaos tests of fallbacks and rollbacks.

Besides an error rate and a delay, a module can be told to *crash* the process that runs it on a
share of its inputs (``crash: segfault | oom | hang | exit``): the faults an isolated worker
(``pipeline.isolation``) must survive. Inline, the same crash takes the service down with it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import random
import resource
import threading
import time
from typing import Any, NoReturn

import numpy as np

from controller.pipeline.errors import Batch, Kernel, KernelError
from controller.spec.modules import Crash, ModuleManifest


def draw(batch: Batch, salt: str) -> float:
    """A number in [0, 1) that depends only on the batch and the salt (reproducible faults)."""
    key = repr(sorted((k, repr(v)[:2000]) for k, v in batch.items())) + salt
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return random.Random(seed).random()


def crash(how: Crash) -> NoReturn:
    """Kill the calling process the way a broken module would."""
    match how:
        case Crash.SEGFAULT:
            ctypes.string_at(0)  # reads address 0: SIGSEGV
        case Crash.EXIT:
            os._exit(3)
        case Crash.HANG:
            threading.Event().wait()
        case Crash.OOM:
            _exhaust_memory()
    raise AssertionError(f"crash {how} returned")  # pragma: no cover


def _exhaust_memory() -> NoReturn:
    # Allocate until the memory limit refuses (MemoryError). Without a limit this would take the
    # whole machine: then fail as if it had been reached.
    if resource.getrlimit(resource.RLIMIT_DATA)[0] == resource.RLIM_INFINITY:
        raise MemoryError("injected fault (runtime.faults.crash=oom; no memory limit is set)")
    hog = []
    while True:  # reserved, never touched: the limit refuses it without using the machine's memory
        hog.append(np.empty(64 << 20, dtype=np.uint8))


class Faulty:
    """Wraps a kernel with deliberate faults (``runtime.faults``): an error rate, a delay and a crash.
    Deterministic per input so that the same request fails the same way (reproducible tests)."""

    def __init__(
        self,
        inner: Kernel,
        *,
        error_rate: float,
        delay_ms: float,
        salt: str,
        after_s: float = 0.0,
        crash: Crash | None = None,
        crash_rate: float = 1.0,
    ) -> None:
        self.inner, self.error_rate, self.delay_s, self.salt = inner, error_rate, delay_ms / 1000, salt
        self.crash, self.crash_rate = crash, crash_rate
        self.active_from = time.monotonic() + after_s

    def __call__(self, batch: Batch) -> dict[str, Any]:
        if time.monotonic() < self.active_from:
            return self.inner(batch)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.crash is not None and draw(batch, self.salt + ":crash") < self.crash_rate:
            crash(self.crash)
        if self.error_rate and draw(batch, self.salt) < self.error_rate:
            raise KernelError("injected fault (runtime.faults.errorRate)")
        return self.inner(batch)


def wrap(kernel: Kernel, manifest: ModuleManifest) -> Kernel:
    """The kernel with the manifest's faults injected, or the kernel itself when it declares none."""
    f = manifest.runtime.faults
    if f and (f.error_rate or f.delay_ms or f.crash):
        return Faulty(
            kernel,
            error_rate=f.error_rate,
            delay_ms=f.delay_ms,
            salt=manifest.name,
            after_s=f.after_seconds,
            crash=f.crash,
            crash_rate=f.crash_rate,
        )
    return kernel
