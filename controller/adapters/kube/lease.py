"""One acting replica: leader election on a ``coordination.k8s.io/v1`` Lease, by client-go's rules.

Only the holder reconciles; other replicas keep watching and take over when the lease expires.
Clocks are injected (``clock``: monotonic seconds; ``wall``: the time written into the Lease), so
tests drive elections with fake time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from controller.adapters.kube.api import LEASES, Kube
from controller.errors import ModshipError, Unavailable

log = logging.getLogger("modship.operator")


def _micro(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """Leader election on a coordination.k8s.io/v1 Lease (client-go's rules): a lease is expired
    when its record has not changed for ``leaseDurationSeconds`` as *we* observed it (no clock skew
    between replicas matters); the holder renews every ``retry`` seconds and stops acting when it
    could not renew for ``renew_deadline`` (< the lease duration, so it stops before others start)."""

    def __init__(
        self,
        kube: Kube,
        *,
        name: str,
        namespace: str,
        identity: str,
        duration: float,
        renew_deadline: float,
        retry: float,
        on_change: Callable[[bool], None],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.kube, self.name, self.namespace, self.identity = kube, name, namespace, identity
        self.duration, self.renew_deadline, self.retry = duration, renew_deadline, retry
        self.on_change = on_change
        self.clock, self.wall = clock, wall
        self._renewed = -float("inf")
        self._leader = False
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    @property
    def leader(self) -> bool:
        return self._leader and self.clock() - self._renewed < self.renew_deadline

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await loop.run_in_executor(None, self.step)
            await asyncio.sleep(self.retry)

    def step(self) -> bool:
        """Try to acquire or renew once; whether this replica may act now."""
        try:
            held = self._try()
        except ModshipError as exc:
            log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            held = False
        if held:
            self._renewed = self.clock()
        if held != self._leader and (held or not self.leader):
            self._leader = held
            log.info("%s %s lease %s/%s", self.identity, "holds" if held else "lost", self.namespace, self.name)
            self.on_change(held)
        return self.leader

    def _try(self) -> bool:
        now = self.wall()
        lease = self.kube.get(LEASES, self.namespace, self.name)
        if lease is None:
            spec = self._spec(now, now, transitions=0)
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name},
                "spec": spec,
            }
            try:
                self.kube.create(LEASES, self.namespace, body)
            except Unavailable:
                return False  # someone else created it first
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
        duration = float(spec.get("leaseDurationSeconds") or self.duration)
        if holder and holder != self.identity and self.clock() < self._observed_at + duration:
            return False
        mine = holder == self.identity
        acquired = spec.get("acquireTime") if mine else _micro(now)
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        ops = [
            {"op": "add", "path": "/metadata/resourceVersion", "value": lease["metadata"]["resourceVersion"]},
            {
                "op": "add",
                "path": "/spec",
                "value": {**self._spec(now, None, transitions=transitions), "acquireTime": acquired},
            },
        ]
        try:
            self.kube.patch(LEASES, self.namespace, self.name, ops)
        except Unavailable:
            return False
        return True

    def _spec(self, now: dt.datetime, acquired: dt.datetime | None, *, transitions: int) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.duration)),
            "renewTime": _micro(now),
            "leaseTransitions": transitions,
        }
        if acquired is not None:
            spec["acquireTime"] = _micro(acquired)
        return spec

    def release(self) -> None:
        """Give the lease up at a clean exit, so another replica takes over at once."""
        if not self.leader:
            return
        lease = self.kube.get(LEASES, self.namespace, self.name)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        ops = [
            {"op": "add", "path": "/metadata/resourceVersion", "value": lease["metadata"]["resourceVersion"]},
            {"op": "replace", "path": "/spec/holderIdentity", "value": ""},
            {"op": "replace", "path": "/spec/leaseDurationSeconds", "value": 1},
        ]
        with contextlib.suppress(ModshipError):
            self.kube.patch(LEASES, self.namespace, self.name, ops)
        self._leader = False
