"""The notification sender: CloudEvents to webhooks, Slack and Teams, never in the rollout's way.

Each sink has a bounded queue and a sender thread of its own, so a slow or dead receiver delays
nothing but its own messages: ``publish`` only enqueues (a full queue dead-letters the event at
once). A message is POSTed with a timeout and retried with exponential backoff (tenacity) on
connection errors, timeouts, 408, 429 and 5xx; any other answer, or the last failed try, puts it in
the dead-letter file (JSON lines, mode 0600) that ``modship notify dead-letters`` shows. Webhook
bodies carry ``X-Modship-Signature-256: sha256=<HMAC-SHA256 of the body>`` when the sink has a key.
Secrets are read when a message is sent and appear in no log line, error or dead-letter entry.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import tenacity

from controller.errors import ModshipError, SpecError
from controller.plan import notifications as plan
from controller.plan import rollout as machine
from controller.plan.actions import Event
from controller.plan.reasons import Reason
from controller.plan.status import RolloutStatus
from controller.spec import notifications as notifications_spec
from controller.spec.notifications import Notifications, Sink, SinkType
from controller.spec.rollout import Rollout

log = logging.getLogger("modship.notify")
SIGNATURE_HEADER = "X-Modship-Signature-256"
_RETRIED_STATUS = frozenset({408, 425, 429})


class _Transient(Exception):
    """A try that may succeed later (its message is safe to show: no URL, no secret)."""


class _Permanent(Exception):
    """A failure no retry mends (a 4xx answer, a missing secret)."""


@dataclass(frozen=True)
class Delivery:
    sink: str
    delivered: bool
    attempts: int
    error: str | None = None
    seconds: float = 0.0


def from_file(path: Path, *, mlflow: str | None, dead_letter: Path) -> Notifier | None:
    """The sender for the notifications file ``path``, if it names any sink (a bad file is a
    SpecError). ``mlflow``: the registry's URL, for links in the events when the file gives none."""
    spec = notifications_spec.load(path)
    if not spec.sinks:
        return None
    if mlflow and spec.links.mlflow is None:
        spec = spec.model_copy(update={"links": spec.links.model_copy(update={"mlflow": mlflow})})
    return Notifier(spec, dead_letter=dead_letter)


class Notifier:
    """Delivers CloudEvents to the sinks subscribed to them. Thread-safe; ``close`` stops it."""

    def __init__(
        self,
        cfg: Notifications,
        *,
        dead_letter: Path,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.cfg = cfg
        self.dead_letter = dead_letter
        self._client = httpx.Client(transport=transport, follow_redirects=False)
        self._stop = threading.Event()
        self._file_lock = threading.Lock()
        self._workers = {s.name: _Worker(self, s) for s in cfg.sinks}
        self.delivered: list[Delivery] = []  # the latest outcomes, for tests and `notify test`
        self.dead: list[Delivery] = []

    # -- what the controller calls --------------------------------------------------------------
    def on_decision(self, r: Rollout, before: RolloutStatus, d: machine.Decision, now: float) -> None:
        """Enqueue a cycle's transitions for their subscribers (``reconcile_once``'s ``notify``)."""
        self.on_cycle(r, before, d.status, [a for a in d.actions if isinstance(a, Event)], now)

    def on_cycle(
        self, r: Rollout, before: RolloutStatus, after: RolloutStatus, events: list[Event], now: float
    ) -> None:
        """Enqueue the cycle's transitions for their subscribers; returns at once."""
        if not events or not self.cfg.subscriptions:
            return
        if any(e.reason in (Reason.ROLLOUT_STARTED, Reason.ROLLOUT_RESTARTED) for e in events):
            before = RolloutStatus()  # a new rollout: what the last one measured does not count
        for ev, trigger in plan.cloud_events(r, before, after, events, now=now, links=self.cfg.links):
            for name in plan.sinks_for(self.cfg, r.spec.system, trigger):
                self.publish(name, ev)

    def publish(self, sink: str, ev: plan.CloudEvent) -> None:
        w = self._workers[sink]
        w.start_once()
        try:
            w.queue.put_nowait(ev)
        except queue.Full:
            self._dead(w.sink, ev, Delivery(sink, False, 0, f"queue full ({self.cfg.queue} waiting)"))

    def deliver(self, sink: str, ev: plan.CloudEvent) -> Delivery:
        """Send now, in this thread, with the sink's retries (``modship notify test``)."""
        return self._send(self.cfg.sink(sink), ev)

    def drain(self, timeout: float) -> bool:
        """Wait until every queued event was delivered or dead-lettered; False on timeout."""
        deadline = time.monotonic() + timeout
        for w in self._workers.values():
            while w.queue.unfinished_tasks:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.01)
        return True

    def close(self, *, timeout: float = 5.0) -> None:
        """Give queued events ``timeout`` seconds, then stop: what is left is dead-lettered."""
        self.drain(timeout)
        self._stop.set()
        for w in self._workers.values():
            with contextlib.suppress(queue.Full):
                w.queue.put_nowait(None)
        for w in self._workers.values():
            w.join_if_started(timeout=max(1.0, timeout))
            w.flush_left()
        self._client.close()

    # -- one message ------------------------------------------------------------------------------
    def _send(self, sink: Sink, ev: plan.CloudEvent) -> Delivery:
        t0 = time.monotonic()
        tries = 0

        def once() -> None:
            nonlocal tries
            tries += 1
            self._post(sink, ev)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(sink.attempts),
            wait=tenacity.wait_exponential(multiplier=sink.backoff, max=30.0),
            retry=tenacity.retry_if_exception_type(_Transient),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            retrying(once)
        except (_Transient, _Permanent) as exc:
            return Delivery(sink.name, False, tries, str(exc), time.monotonic() - t0)
        return Delivery(sink.name, True, tries, None, time.monotonic() - t0)

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise _Permanent("the controller stopped before the next try")

    def _post(self, sink: Sink, ev: plan.CloudEvent) -> None:
        try:
            url = sink.reveal_url()
            key = sink.hmac_key.reveal(f"sinks.{sink.name}.hmacKey") if sink.hmac_key is not None else None
        except SpecError as exc:
            raise _Permanent(str(exc)) from None
        body = json.dumps(plan.message(sink.type, ev), separators=(",", ":"), sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "modship"}
        if sink.type is SinkType.WEBHOOK:
            headers["Content-Type"] = "application/cloudevents+json; charset=utf-8"
            if key is not None:
                headers[SIGNATURE_HEADER] = "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
        try:
            resp = self._client.post(url, content=body, headers=headers, timeout=sink.timeout)
        except httpx.TimeoutException:
            raise _Transient(f"no answer within {sink.timeout:g}s") from None
        except httpx.TransportError as exc:  # its text may hold the URL (a token): name the kind only
            raise _Transient(f"cannot connect ({type(exc).__name__})") from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError):
            raise _Permanent("the sink's URL is not a valid http(s) URL") from None
        if resp.status_code >= 500 or resp.status_code in _RETRIED_STATUS:
            raise _Transient(f"HTTP {resp.status_code}")
        if resp.status_code >= 300:
            raise _Permanent(f"HTTP {resp.status_code}")

    def _dead(self, sink: Sink, ev: plan.CloudEvent, d: Delivery) -> None:
        self.dead.append(d)
        log.warning("notification %s to sink %s undeliverable: %s (dead-lettered)", ev.type, sink.name, d.error)
        entry = {"at": time.time(), "sink": sink.name, "attempts": d.attempts, "error": d.error, "event": ev.to_dict()}
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self._file_lock:
            self.dead_letter.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dead_letter, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)


class _Worker:
    """One sink's queue and sender thread (started with the first event)."""

    def __init__(self, owner: Notifier, sink: Sink) -> None:
        self.owner, self.sink = owner, sink
        self.queue: queue.Queue[plan.CloudEvent | None] = queue.Queue(maxsize=owner.cfg.queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start_once(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"modship-notify-{self.sink.name}", daemon=True)
                self._thread.start()

    def join_if_started(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def flush_left(self) -> None:
        """After stopping: whatever is still queued goes to the dead-letter file."""
        while True:
            try:
                ev = self.queue.get_nowait()
            except queue.Empty:
                return
            if ev is not None:
                self.owner._dead(self.sink, ev, Delivery(self.sink.name, False, 0, "the controller stopped"))
            self.queue.task_done()

    def _run(self) -> None:
        o = self.owner
        while True:
            ev = self.queue.get()
            try:
                if ev is None:
                    return
                if o._stop.is_set():
                    o._dead(self.sink, ev, Delivery(self.sink.name, False, 0, "the controller stopped"))
                    continue
                d = _guarded(functools.partial(o._send, self.sink, ev), self.sink.name)
                if d.delivered:
                    o.delivered.append(d)
                else:
                    o._dead(self.sink, ev, d)
            finally:
                self.queue.task_done()


def _guarded(send: Callable[[], Delivery], sink: str) -> Delivery:
    try:
        return send()
    except (ModshipError, httpx.HTTPError, OSError) as exc:  # never let one message stop the sender
        return Delivery(sink, False, 0, type(exc).__name__)


def read_dead_letters(path: Path, *, limit: int = 100) -> list[dict[str, Any]]:
    """The latest ``limit`` dead-lettered entries, oldest first (a torn last line is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines()[-limit:]:
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out
