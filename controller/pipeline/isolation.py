"""Isolation: run a step's module in a worker process of its own (``isolation: process``).

A ``ProcessKernel`` is a ``Kernel`` whose module lives in a persistent worker
(``python -m controller.pipeline.worker``) that loads it once, under a memory limit
(RLIMIT_DATA) and a CPU-time limit per call (RLIMIT_CPU), and dies with the service
(PR_SET_PDEATHSIG). Calls travel over a socket pair in the ``wire`` framing: JSON and raw array
buffers, never pickle, because the worker runs code the service does not trust.

When the module segfaults, calls ``os._exit``, runs out of memory or outlives the call's deadline,
the call raises a ``WorkerFailed`` (a ``KernelError``: the step's fallback answers; a hang is also
a ``TimeoutError``, so it counts as a timeout) whose ``reason`` labels the step's error metric.
The worker is started again at once after a first failure, then with a capped exponential backoff
while failures repeat; calls in between fail fast with ``WorkerUnavailable``. Calls are
serialised: one worker runs one call at a time.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.pipeline import wire, worker
from controller.pipeline.errors import Batch, GuardRejected, KernelError
from controller.spec.modules import ModuleManifest, Stability
from controller.spec.system import Isolation, Limits, Step

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0  # per call, for an isolated step that states no timeout
START_TIMEOUT_S = 120.0  # a worker that has not loaded its module by then is killed
BACKOFF_BASE_S, BACKOFF_MAX_S = 0.5, 30.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the worker imports the same controller


class WorkerFailed(KernelError):
    """The isolated worker died or stopped answering during a call; it is being restarted."""

    reason = "worker_crashed"


class WorkerCrashed(WorkerFailed):
    """The worker died of a signal (segfault, abort), exited, or broke the framing."""


class WorkerOutOfMemory(WorkerFailed):
    reason = "worker_oom"


class WorkerTimeout(WorkerFailed, TimeoutError):
    """The call outlived its deadline (or the CPU-time limit): the worker was killed."""

    reason = "worker_timeout"


class WorkerUnavailable(WorkerFailed):
    """No worker can take the call now: it is restarting after failures, still loading, or closed."""

    reason = "worker_unavailable"


def mode(step: Step, manifest: ModuleManifest) -> Isolation:
    """Where a step's module runs: as the step says, else in a worker when it is experimental."""
    if step.isolation is not None:
        return step.isolation
    return Isolation.PROCESS if manifest.metadata.stability is Stability.EXPERIMENTAL else Isolation.INLINE


def reason(exc: BaseException) -> str | None:
    """The step-error label of a worker failure (``worker_crashed``...), None for anything else."""
    return exc.reason if isinstance(exc, WorkerFailed) else None


def backoff(failures: int) -> float:
    """Seconds before the next start after ``failures`` consecutive failures: 0, then doubling, capped."""
    return 0.0 if failures <= 1 else min(BACKOFF_BASE_S * 2 ** (failures - 2), BACKOFF_MAX_S)


def failure(returncode: int | None, limits: Limits) -> WorkerFailed:
    """What a worker's exit status says about how it failed."""
    if returncode == worker.EXIT_OOM:
        return WorkerOutOfMemory(f"the module ran out of memory (limit {limits.memory_mb} MiB)")
    if returncode == -signal.SIGXCPU:
        return WorkerTimeout(f"the module used more than {limits.cpu_seconds:g} s of CPU time in one call")
    if returncode == -signal.SIGKILL:
        return WorkerOutOfMemory("the worker was killed (SIGKILL), most likely by the out-of-memory killer")
    if returncode is None:
        return WorkerCrashed("the worker closed its channel")
    if returncode < 0:
        return WorkerCrashed(f"the worker died of {signal.Signals(-returncode).name}")
    return WorkerCrashed(f"the worker exited with status {returncode}")


_spawner: tuple[int, cf.ThreadPoolExecutor] | None = None
_spawner_lock = threading.Lock()


def _spawn_thread() -> cf.ThreadPoolExecutor:
    """One long-lived thread starts every worker: PR_SET_PDEATHSIG fires when the *thread* that
    forked the worker ends, so a short-lived request thread must never be its parent."""
    global _spawner
    with _spawner_lock:
        if _spawner is None or _spawner[0] != os.getpid():
            _spawner = (os.getpid(), cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="modship-spawner"))
        return _spawner[1]


@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    sock: socket.socket
    started: float
    ready: bool = False

    def stop(self) -> int | None:
        """Kill the process (idempotent) and return its exit status."""
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        return self.proc.wait()


class ProcessKernel:
    """A module run in an isolated worker process; see the module docstring."""

    def __init__(
        self, root: Path, manifest: ModuleManifest, *, limits: Limits, timeout_s: float | None, faults: bool = True
    ) -> None:
        self.root, self.manifest, self.limits, self.faults = root, manifest, limits, faults
        self.timeout_s = timeout_s or DEFAULT_TIMEOUT_S
        self._lock = threading.Lock()
        self._failures = 0
        self._retry_at = 0.0
        self._closed = False
        self._worker: _Worker | None = self._spawn()
        try:
            self._await_ready(self._worker, time.monotonic() + START_TIMEOUT_S)
        except WorkerFailed as exc:
            self.close()
            raise WorkerUnavailable(f"{manifest.name}: the isolated worker did not start: {exc}") from None

    @property
    def pid(self) -> int | None:
        """The worker's process id (None while it is restarting)."""
        w = self._worker
        return w.proc.pid if w is not None else None

    def __call__(self, batch: Batch) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        message = wire.encode({"op": "call"}, batch)  # TypeError on values that cannot travel
        if not self._lock.acquire(timeout=self.timeout_s):
            raise WorkerTimeout(f"the worker stayed busy with earlier calls for {self.timeout_s:g} s")
        try:
            w = self._ready(deadline)
            header, ports = self._roundtrip(w, message, deadline)
            self._failures = 0  # a complete answer: the worker is healthy
        finally:
            self._lock.release()
        if header.get("ok") is True:
            return ports
        text = str(header.get("message", "the module failed"))
        raise GuardRejected(text) if header.get("kind") == "guard" else KernelError(text)

    def _ready(self, deadline: float) -> _Worker:
        if self._closed:
            raise WorkerUnavailable("the pipeline is closed")
        if self._worker is None:
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                raise WorkerUnavailable(f"restarting in {wait:.1f} s after {self._failures} failures in a row")
            self._worker = self._spawn()
        w = self._worker
        if not w.ready:
            self._await_ready(w, min(deadline, w.started + START_TIMEOUT_S))
        return w

    def _spawn(self) -> _Worker:
        parent, child = socket.socketpair()
        cmd = [
            sys.executable, "-m", "controller.pipeline.worker", "--fd", str(child.fileno()),
            "--parent", str(os.getpid()), "--memory-mb", str(self.limits.memory_mb),
            "--cpu-seconds", str(self.limits.cpu_seconds),
        ]  # fmt: skip
        path = os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path}
        try:
            proc = (
                _spawn_thread()
                .submit(subprocess.Popen, cmd, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, env=env)
                .result()
            )
        finally:
            child.close()
        manifest = self.manifest.model_dump(mode="json", by_alias=True, exclude_none=True)
        load = {"op": "load", "root": str(self.root), "manifest": manifest, "faults": self.faults}
        parent.settimeout(START_TIMEOUT_S)
        wire.send(parent, wire.encode(load))
        return _Worker(proc, parent, time.monotonic())

    def _await_ready(self, w: _Worker, deadline: float) -> None:
        try:
            header, _ = wire.receive(w.sock, deadline)
        except TimeoutError:
            if time.monotonic() < w.started + START_TIMEOUT_S:
                raise WorkerUnavailable("the worker is still loading the module") from None
            raise self._fail(w, WorkerTimeout(f"the module did not load within {START_TIMEOUT_S:g} s")) from None
        except (EOFError, OSError, wire.WireError):
            raise self._fail(w, None) from None
        if header.get("op") != "ready":
            text = str(header.get("message", header))[:2000]
            raise self._fail(w, WorkerCrashed(f"the module did not load: {text}"))
        w.ready = True

    def _roundtrip(
        self, w: _Worker, message: list[bytes | memoryview], deadline: float
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            w.sock.settimeout(max(deadline - time.monotonic(), 1e-3))
            wire.send(w.sock, message)
            return wire.receive(w.sock, deadline)
        except TimeoutError:
            late = WorkerTimeout(f"no answer within {self.timeout_s:g} s: the worker was killed")
            raise self._fail(w, late) from None
        except (EOFError, OSError):
            raise self._fail(w, None) from None
        except wire.WireError as exc:
            raise self._fail(w, WorkerCrashed(f"the worker broke the framing: {exc}")) from None

    def _fail(self, w: _Worker, known: WorkerFailed | None) -> WorkerFailed:
        """Record a failure: the worker is stopped and the next one scheduled. Returns what to raise."""
        if known is None:  # the channel broke: the exit status tells why
            exited = w.proc.poll() is not None or _exits_soon(w.proc)
            code = w.stop()
            exc = failure(code if exited else None, self.limits)
        else:
            w.stop()
            exc = known
        self._worker = None
        self._failures += 1
        delay = backoff(self._failures)
        self._retry_at = time.monotonic() + delay
        log.warning("%s: isolated worker failed (%s: %s); restart in %.1fs", self.manifest.name, exc.reason, exc, delay)
        if delay == 0 and w.ready and not self._closed:  # a module that did not load waits for a call
            with contextlib.suppress(OSError):
                self._worker = self._spawn()
        return exc

    def close(self) -> None:
        """Stop the worker (idempotent); later calls raise WorkerUnavailable."""
        self._closed = True
        w, self._worker = self._worker, None
        if w is not None:
            w.stop()


def _exits_soon(proc: subprocess.Popen[bytes], within: float = 2.0) -> bool:
    # After the channel closes the worker is dying (a fault handler may still be printing).
    try:
        proc.wait(timeout=within)
    except subprocess.TimeoutExpired:
        return False
    return True


def start(root: Path, manifest: ModuleManifest, step: Step, timeout_ms: float | None) -> ProcessKernel:
    """The worker-backed kernel of an isolated step (limits from the step, defaults otherwise)."""
    return ProcessKernel(
        root, manifest, limits=step.limits or Limits(), timeout_s=timeout_ms / 1000 if timeout_ms else None
    )


def close_all(kernels_: Mapping[str, ProcessKernel]) -> None:
    for k in kernels_.values():
        k.close()
