"""The isolated worker: ``python -m controller.pipeline.worker --fd N --parent PID ...``.

Started by ``pipeline.isolation.ProcessKernel`` with one end of a socket pair. It dies with its
parent (``PR_SET_PDEATHSIG``), sets its resource limits before any module code runs, loads the
module once from its verified directory (the first message), answers ``ready``, then serves calls
until the channel closes. A call that exhausts memory ends the worker with ``EXIT_OOM`` so the
parent can tell it from a crash; a module's own exceptions are answered, not fatal.
"""

from __future__ import annotations

import argparse
import ctypes
import faulthandler
import math
import os
import resource
import signal
import socket
import sys
from pathlib import Path
from typing import Any

EXIT_OOM = 86  # a call ran out of memory (MemoryError under the limit)
EXIT_LOAD = 87  # the module did not load
EXIT_ORPHAN = 88  # the parent was gone before the worker started
PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(EXIT_ORPHAN)


def _limit(memory_mb: int) -> None:
    mem = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_DATA, (mem, mem))  # hard = soft: module code cannot lift it
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash must not write a core file


def _cpu_budget(seconds: float) -> None:
    """Allow ``seconds`` more CPU time from now (RLIMIT_CPU counts the process's whole life)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(ru.ru_utime + ru.ru_stime + seconds)
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _load(sock: socket.socket) -> Any:
    from controller.pipeline import kernels, wire
    from controller.spec.modules import ModuleManifest

    header, _ = wire.receive(sock)
    try:
        manifest = ModuleManifest.model_validate(header["manifest"])
        kernel = kernels.load(Path(header["root"]), manifest, faults=bool(header.get("faults", True)))
    except BaseException as exc:
        wire.send(sock, wire.encode({"op": "failed", "message": f"{type(exc).__name__}: {exc}"[:2000]}))
        os._exit(EXIT_LOAD)
    wire.send(sock, wire.encode({"op": "ready", "pid": os.getpid()}))
    return kernel


def serve(sock: socket.socket, cpu_seconds: float) -> None:
    from controller.pipeline import wire
    from controller.pipeline.errors import GuardRejected

    kernel = _load(sock)
    while True:
        try:
            _, batch = wire.receive(sock)
        except EOFError:
            return
        _cpu_budget(cpu_seconds)
        try:
            reply = wire.encode({"ok": True}, kernel(batch))
        except MemoryError:
            os._exit(EXIT_OOM)
        except Exception as exc:
            kind = "guard" if isinstance(exc, GuardRejected) else "error"
            reply = wire.encode({"ok": False, "kind": kind, "message": f"{type(exc).__name__}: {exc}"[:2000]})
        wire.send(sock, reply)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m controller.pipeline.worker")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--memory-mb", type=int, required=True)
    p.add_argument("--cpu-seconds", type=float, required=True)
    args = p.parse_args(argv)
    _die_with_parent(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the service; it stops us
    faulthandler.enable()  # a segfault leaves a traceback in the service's log
    _limit(args.memory_mb)
    sock = socket.socket(fileno=args.fd)
    try:
        serve(sock, args.cpu_seconds)
    except MemoryError:
        os._exit(EXIT_OOM)
    sys.exit(0)


if __name__ == "__main__":
    main()
