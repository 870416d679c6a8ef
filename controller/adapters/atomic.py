"""Atomic file writes: a unique temp file, fsync, rename. Standard library only (the process
supervisor imports it), so a process killed at any instant leaves the old or the new file."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
