"""Atomic file writes: the one way modship replaces a file.

The new content goes to a temporary file with a unique name beside the target (two writers never
share it), is flushed and fsynced, then renamed over the target, so a process killed at any instant
(even ``kill -9``) leaves the old file or the new one, never half of one. (The directory is not
fsynced: after a power cut the rename itself may be lost, the old file then being what is read.)
The file keeps the target's permission bits when it exists, else the umask's; ``mode`` sets them
exactly (0o600 for secrets: the file is never readable by others, not even for an instant).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)  # exactly, whatever the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is None:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str, *, mode: int | None = None) -> None:
    write_bytes(path, text.encode("utf-8"), mode=mode)
