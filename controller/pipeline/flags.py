"""Feature flags per request: spec defaults, runtime overrides (a JSON file the controller writes,
or a ConfigMap on Kubernetes), and request headers, in that order of precedence (headers win)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from controller.spec.system import Flag

ON = frozenset({"on", "true", "1", "yes", "enabled"})
OFF = frozenset({"off", "false", "0", "no", "disabled"})


@dataclass(frozen=True, slots=True)
class FlagState:
    enabled: bool
    percent: float


def bucket(flag: str, key: str) -> float:
    """A stable position in [0, 100) for this flag and request key."""
    digest = hashlib.blake2b(f"{flag}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000 / 100


class Flags:
    def __init__(self, flags: list[Flag], overrides: Path | None = None, *, recheck_seconds: float = 1.0) -> None:
        self.spec = {f.name: f for f in flags}
        self.path = overrides
        self._recheck = recheck_seconds
        self._checked = 0.0
        self._mtime: float | None = None
        self._lock = threading.Lock()
        self.state = {f.name: FlagState(f.enabled, f.percent) for f in flags}

    def _refresh(self) -> None:
        now = time.monotonic()
        if self.path is None or now - self._checked < self._recheck:
            return
        with self._lock:
            self._checked = now
            try:
                mtime = os.stat(self.path).st_mtime
            except FileNotFoundError:
                mtime = None
            if mtime == self._mtime:
                return
            self._mtime = mtime
            state = {n: FlagState(f.enabled, f.percent) for n, f in self.spec.items()}
            if mtime is not None:
                try:
                    data = json.loads(self.path.read_text())
                except (OSError, ValueError):
                    return  # keep the last good state; a half-written file is retried next time
                for name, v in data.items():
                    if name in state and isinstance(v, dict):
                        state[name] = FlagState(bool(v.get("enabled", True)), float(v.get("percent", 100.0)))
            self.state = state

    def evaluate(self, headers: Mapping[str, str], key: str) -> dict[str, bool]:
        """Whether each flag is on for this request."""
        self._refresh()
        out = {}
        for name, f in self.spec.items():
            header = headers.get(f.header_name)
            if header is not None and header.lower() in ON | OFF:
                out[name] = header.lower() in ON
                continue
            st = self.state[name]
            out[name] = st.enabled and (st.percent >= 100 or bucket(name, key) < st.percent)
        return out
