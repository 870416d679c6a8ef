"""Lease election on a fake clock against an in-memory Lease store: acquire, renew, expiry as the
replica observed it, stepping down before another may start, release at exit."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

from controller.adapters.kube.api import LEASES, Resource
from controller.adapters.kube.lease import LeaseElector
from controller.errors import Unavailable

Json = dict[str, Any]


class Leases:
    """The part of ``Kube`` the elector uses, in memory, with resourceVersion preconditions."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Json] = {}
        self.version = 0
        self.down = False
        self.race = False  # the next patch finds the object changed since it was read

    def _check(self) -> None:
        if self.down:
            raise Unavailable("the API server is not answering")

    def get(self, res: Resource, namespace: str | None, name: str) -> Json | None:
        assert res == LEASES
        self._check()
        obj = self.objects.get((namespace or "", name))
        return copy.deepcopy(obj) if obj else None

    def create(self, res: Resource, namespace: str | None, body: Json) -> Json:
        self._check()
        key = (namespace or "", body["metadata"]["name"])
        if key in self.objects:
            raise Unavailable("AlreadyExists")
        self.version += 1
        self.objects[key] = {
            **copy.deepcopy(body),
            "metadata": {**body["metadata"], "resourceVersion": str(self.version)},
        }
        return copy.deepcopy(self.objects[key])

    def patch(
        self, res: Resource, namespace: str | None, name: str, ops: list[Json], *, sub: str | None = None
    ) -> Json:
        self._check()
        obj = self.objects[(namespace or "", name)]
        if self.race:
            self.race = False
            self.version += 1
            obj["metadata"]["resourceVersion"] = str(self.version)
        for op in ops:
            if op["path"] == "/metadata/resourceVersion":
                if op["value"] != obj["metadata"]["resourceVersion"]:
                    raise Unavailable("Conflict")
            elif op["path"] == "/spec":
                obj["spec"] = copy.deepcopy(op["value"])
            else:
                obj["spec"][op["path"].removeprefix("/spec/")] = op["value"]
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(obj)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> dt.datetime:
        return dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=self.t)


def elector(kube: Leases, clock: Clock, identity: str, changes: list[tuple[str, bool]]) -> LeaseElector:
    return LeaseElector(
        kube,  # type: ignore[arg-type]
        name="modship-operator",
        namespace="ml",
        identity=identity,
        duration=15,
        renew_deadline=10,
        retry=2,
        on_change=lambda held: changes.append((identity, held)),
        clock=clock,
        wall=clock.wall,
    )


def test_the_first_replica_acquires_and_renews_the_other_waits() -> None:
    kube, clock, changes = Leases(), Clock(), []
    a, b = elector(kube, clock, "a", changes), elector(kube, clock, "b", changes)
    assert a.step() and not b.step()
    for _ in range(10):  # renewals every 2 s keep it
        clock.t += 2
        assert a.step() and not b.step()
    spec = kube.objects[("ml", "modship-operator")]["spec"]
    assert spec["holderIdentity"] == "a" and spec["leaseTransitions"] == 0 and spec["leaseDurationSeconds"] == 15
    assert changes == [("a", True)]


def test_a_silent_holder_is_replaced_after_the_duration_as_observed() -> None:
    kube, clock, changes = Leases(), Clock(), []
    a, b = elector(kube, clock, "a", changes), elector(kube, clock, "b", changes)
    assert a.step() and not b.step()
    clock.t += 14.9  # a stops renewing (crashed); b has seen the same record for 14.9 s
    assert not b.step()
    clock.t += 0.2
    assert b.step()
    assert kube.objects[("ml", "modship-operator")]["spec"]["leaseTransitions"] == 1
    assert not a.leader  # a could not have renewed for > renew_deadline: it stopped acting first
    assert changes == [("a", True), ("b", True)]


def test_a_holder_that_cannot_renew_stops_acting_at_the_renew_deadline() -> None:
    kube, clock, changes = Leases(), Clock(), []
    a = elector(kube, clock, "a", changes)
    assert a.step()
    kube.down = True
    clock.t += 9.9
    assert a.step()  # within the renew deadline: still the leader
    clock.t += 0.2
    assert not a.step() and not a.leader
    assert changes == [("a", True), ("a", False)]
    kube.down = False
    clock.t += 2
    assert a.step()  # its own lease: renewed without waiting for expiry


def test_a_conflicting_write_does_not_acquire() -> None:
    kube, clock, changes = Leases(), Clock(), []
    a, b = elector(kube, clock, "a", changes), elector(kube, clock, "b", changes)
    assert a.step() and not b.step()
    clock.t += 20  # expired as b observed it, but another replica writes between b's read and write
    kube.race = True
    assert not b.step()
    assert kube.objects[("ml", "modship-operator")]["spec"]["holderIdentity"] == "a"


def test_release_hands_over_at_once() -> None:
    kube, clock, changes = Leases(), Clock(), []
    a, b = elector(kube, clock, "a", changes), elector(kube, clock, "b", changes)
    assert a.step() and not b.step()
    a.release()
    assert not a.leader
    clock.t += 2  # b sees a new record (no holder): it may take it at once
    assert b.step()
