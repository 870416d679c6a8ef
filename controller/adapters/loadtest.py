"""The built-in load-test hook: replay a dataset of request bodies through a system at a steady
rate, in a thread, while its canary is in flight, so analysis has samples when live traffic is thin.

The dataset is JSON lines, one request body per line, replayed in order and round again. Requests
go through the system's router like live traffic, so stable and canary both get their share (the
checks that compare the canary with stable need both). One request at a time: a system slower than
``1/rate`` seconds a request gets fewer than ``rate`` a second.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import httpx

from controller.errors import SpecError
from controller.spec.rollout import LoadTest

log = logging.getLogger("modship.loadtest")
FIELD = "spec.loadTest.dataset"


def read_dataset(path: Path) -> list[bytes]:
    """Every line's JSON body, re-encoded; SpecError naming the line on a bad one."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror}", field=FIELD) from None
    bodies = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            bodies.append(json.dumps(json.loads(line)).encode())
        except json.JSONDecodeError as exc:
            raise SpecError(f"{path} line {i} is not JSON: {exc.msg}", field=FIELD) from None
    if not bodies:
        raise SpecError(f"{path} holds no request", field=FIELD)
    return bodies


class LoadRunner:
    """Replays ``spec``'s dataset against ``base_url`` until ``stop``."""

    def __init__(self, spec: LoadTest, base_url: str, *, home: Path) -> None:
        path = Path(spec.dataset)
        self.spec = spec
        self.bodies = read_dataset(path if path.is_absolute() else home / path)
        self.url = base_url.rstrip("/") + spec.path
        self.sent = self.ok = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modship-loadtest", daemon=True)

    def start(self) -> LoadRunner:
        self._thread.start()
        log.info("load test: %g requests/s of %d bodies → %s", self.spec.rate, len(self.bodies), self.url)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        headers = {"Content-Type": "application/json", "X-Modship-Load-Test": "1", **self.spec.headers}
        gap = 1.0 / self.spec.rate
        next_at = time.monotonic()
        with httpx.Client(timeout=10.0) as client:
            while not self._stop.is_set():
                body = self.bodies[self.sent % len(self.bodies)]
                self.sent += 1
                try:
                    if client.post(self.url, content=body, headers=headers).status_code < 500:
                        self.ok += 1
                except httpx.HTTPError:
                    pass  # the router counts what failed; the analysis decides
                next_at = max(next_at + gap, time.monotonic() - gap)  # pace: never burst to catch up
                self._stop.wait(max(0.0, next_at - time.monotonic()))
