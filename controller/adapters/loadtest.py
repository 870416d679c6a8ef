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
        self.url = _url(spec, base_url)
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


class LoadTests:
    """The load-test hooks of many rollouts (the operator's): each runs while its canary is in
    flight, and only then; a dataset that cannot be read is reported once per spec, not retried."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._running: dict[object, LoadRunner] = {}
        self._refused: dict[object, tuple[LoadTest, str]] = {}
        self._lock = threading.Lock()

    def sync(self, key: object, spec: LoadTest | None, base_url: str) -> tuple[bool, str] | None:
        """Run ``spec`` against ``base_url`` for ``key`` (None: stop it). Returns what to show:
        (running, message), or None when there is no load test."""
        with self._lock:
            runner = self._running.get(key)
            if runner is not None and (spec is None or runner.spec != spec or runner.url != _url(spec, base_url)):
                runner.stop()
                del self._running[key]
                runner = None
            if spec is None:
                self._refused.pop(key, None)
                return None
            refused = self._refused.get(key)
            if refused is not None and refused[0] == spec:
                return False, refused[1]
            if runner is None:
                try:
                    runner = self._running[key] = LoadRunner(spec, base_url, home=self.home).start()
                except SpecError as exc:
                    self._refused[key] = (spec, str(exc))
                    log.error("%s: load test not started: %s", key, exc)
                    return False, str(exc)
            return True, f"replaying {len(runner.bodies)} request(s) at {spec.rate:g}/s to {runner.url}"

    def stop(self, key: object) -> None:
        with self._lock:
            runner = self._running.pop(key, None)
            self._refused.pop(key, None)
        if runner is not None:
            runner.stop()

    def close(self) -> None:
        with self._lock:
            runners, self._running = list(self._running.values()), {}
        for r in runners:
            r.stop()


def _url(spec: LoadTest, base_url: str) -> str:
    return base_url.rstrip("/") + spec.path
