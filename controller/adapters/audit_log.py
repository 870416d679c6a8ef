"""The audit log as a file of JSON lines (``$MODSHIP_HOME/audit.jsonl`` locally; on Kubernetes the
operator's file on its volume), hash-chained by ``plan.audit``.

Appends are serialised across processes by an exclusive ``flock`` on the file (the controller, the
CLI registering a module and the operator may write at once); each line is fsynced before the call
returns. The head (seq and hash of the last entry) is also written to ``audit.head`` beside it: an
anchor that detects entries cut from the end. Both files live on the same disk, so an attacker who
can write that directory can still rewrite the whole chain *and* its anchor; copy the head elsewhere
(``modship audit verify -o json`` prints it) to detect that too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from controller import atomic
from controller.errors import IntegrityError
from controller.plan import audit

ANCHOR_SUFFIX = ".head"


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.anchor_path = path.with_name(path.name + ANCHOR_SUFFIX)

    def append(self, body: dict[str, Any]) -> dict[str, Any]:
        """Seal ``body`` after the current head and append it durably; returns the entry."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked() as f:
            last = _last_line(f)
            try:
                prev = json.loads(last) if last else None
                seq, head = (int(prev["seq"]) + 1, str(prev["hash"])) if prev else (0, audit.GENESIS)
            except (ValueError, KeyError, TypeError):
                raise IntegrityError(
                    f"{self.path}: its last entry is damaged, nothing appended (see `modship audit verify`)"
                ) from None
            entry = audit.seal(body, seq=seq, prev=head)
            f.seek(0, os.SEEK_END)
            f.write((json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
            atomic.write_text(self.anchor_path, json.dumps({"seq": seq, "hash": entry["hash"]}))
        return entry

    def lines(self) -> list[str]:
        if not self.path.exists():
            return []
        return [x for x in self.path.read_text(encoding="utf-8").splitlines() if x.strip()]

    def entries(self) -> list[dict[str, Any]]:
        """Every entry that parses (``verify`` says whether the chain holds)."""
        out = []
        for x in self.lines():
            with contextlib.suppress(ValueError):
                e = json.loads(x)
                if isinstance(e, dict):
                    out.append(e)
        return out

    def anchor(self) -> tuple[int, str] | None:
        try:
            d = json.loads(self.anchor_path.read_text())
            return int(d["seq"]), str(d["hash"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def verify(self) -> audit.Broken | None:
        return audit.verify(self.lines(), anchor=self.anchor())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[IO[bytes]]:
        with self.path.open("a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield f
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _last_line(f: IO[bytes]) -> str:
    """The file's last non-empty line, read backwards from the end (the log only grows)."""
    end = f.seek(0, os.SEEK_END)
    buf, pos = b"", end
    while pos > 0:
        step = min(4096, pos)
        pos -= step
        f.seek(pos)
        buf = f.read(step) + buf
        lines = buf.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or pos == 0:
            return lines[-1].decode() if lines[-1].strip() else ""
    return ""
