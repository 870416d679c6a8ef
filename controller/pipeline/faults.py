"""Deliberate faults around a kernel (``runtime.faults``), for chaos tests of fallbacks and rollbacks."""

from __future__ import annotations

import hashlib
import random
import time
from typing import Any

from controller.pipeline.errors import Batch, Kernel, KernelError
from controller.spec.modules import ModuleManifest


class Faulty:
    """Wraps a kernel with deliberate faults (``runtime.faults``): an error rate and a delay.
    Deterministic per input so that the same request fails the same way (reproducible tests)."""

    def __init__(self, inner: Kernel, *, error_rate: float, delay_ms: float, salt: str, after_s: float = 0.0) -> None:
        self.inner, self.error_rate, self.delay_s, self.salt = inner, error_rate, delay_ms / 1000, salt
        self.active_from = time.monotonic() + after_s

    def __call__(self, batch: Batch) -> dict[str, Any]:
        if time.monotonic() < self.active_from:
            return self.inner(batch)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.error_rate and self._draw(batch) < self.error_rate:
            raise KernelError("injected fault (runtime.faults.errorRate)")
        return self.inner(batch)

    def _draw(self, batch: Batch) -> float:
        key = repr(sorted((k, repr(v)[:2000]) for k, v in batch.items())) + self.salt
        seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
        return random.Random(seed).random()


def wrap(kernel: Kernel, manifest: ModuleManifest) -> Kernel:
    """The kernel with the manifest's faults injected, or the kernel itself when it declares none."""
    f = manifest.runtime.faults
    if f and (f.error_rate or f.delay_ms):
        return Faulty(kernel, error_rate=f.error_rate, delay_ms=f.delay_ms, salt=manifest.name, after_s=f.after_seconds)
    return kernel
