"""Supervised units against real processes: a unit cannot be orphaned, whatever dies first.

The command below is shaped like ``bentoml serve``: a main process and a "worker" that moved to a
session of its own (so process groups never reach it), plus a helper that ignores SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controller.adapters import proctree, supervisor
from controller.adapters.local_units import Proc, Units
from tests.support.services import free_port, http_ok, wait_until

WORKER = "import os, time; os.setsid(); time.sleep(600)"
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
MAIN = f"""
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", {WORKER!r}])
subprocess.Popen([sys.executable, "-c", {STUBBORN!r}])
time.sleep(600)
"""


def start(units: Units, tmp: Path, name: str = "r1") -> tuple[Proc, dict[str, int]]:
    pid, st, record = units.spawn(name, [sys.executable, "-c", MAIN], dict(os.environ), tmp / f"{name}.log")
    p = Proc(name, pid, 0, time.time(), [], start=st, record=record)

    def members() -> dict[str, int] | None:
        found = {m["process"]: m["pid"] for m in units.members(p)}
        return found if len(found) == 3 and sum(1 for m in units.members(p)) == 4 else None

    by_name = wait_until(members, timeout=20, what="the unit's processes")
    wait_until(lambda: len((supervisor.read_record(Path(record)) or {}).get("members", [])) == 3, timeout=10,
               what="the record")  # fmt: skip
    pids = {m["pid"]: proctree.start_of(m["pid"]) or 0 for m in units.members(p)}
    return p, {**by_name, **{f"#{k}": v for k, v in pids.items()}}


def living(pids: dict[str, int]) -> list[int]:
    return [int(k[1:]) for k, v in pids.items() if k.startswith("#") and proctree.same(int(k[1:]), v)]


@pytest.fixture
def units(tmp_path: Path) -> Iterator[Units]:
    u = Units(tmp_path / "units", grace=1.0)
    yield u
    u.strays(set())  # whatever a failed test left running


@pytest.mark.parametrize("victim", ["server", "worker"])  # the main process, or the worker in its own session
def test_a_dead_process_takes_its_whole_unit_down_and_says_which_and_how(
    units: Units, tmp_path: Path, victim: str
) -> None:
    p, pids = start(units, tmp_path)
    cmds = {int(k[1:]): proctree.cmdline(int(k[1:])) for k in pids if k[0] == "#"}
    worker = next(pid for pid, c in cmds.items() if "os.setsid()" in c and "subprocess" not in c)
    target = pids["server"] if victim == "server" else worker
    os.kill(target, signal.SIGKILL)
    wait_until(lambda: not units.running(p), timeout=20, what="the supervisor to end the unit")
    assert living(pids) == []
    crash = units.collect(p)
    assert crash is not None and (crash.pid, crash.signal, crash.leftovers) == (target, "SIGKILL", 0)
    assert crash.process == ("server" if victim == "server" else Path(sys.executable).name)
    assert units.collect(p) is None  # counted once


def test_a_killed_supervisor_leaves_nothing_behind_once_collected(units: Units, tmp_path: Path) -> None:
    p, pids = start(units, tmp_path)
    os.kill(p.pid, signal.SIGKILL)
    wait_until(lambda: not units.running(p), timeout=10, what="the supervisor gone")
    crash = units.collect(p)
    assert crash is not None and (crash.process, crash.signal) == ("supervisor", "SIGKILL")
    assert crash.leftovers >= 2  # the worker and the helper were orphaned: stopped from the record
    assert living(pids) == []


def test_stop_ends_every_process_even_those_ignoring_sigterm(units: Units, tmp_path: Path) -> None:
    p, pids = start(units, tmp_path)
    units.stop([p])
    assert living(pids) == [] and not units.running(p)
    assert not Path(p.record).exists()


def test_a_restarted_controller_adopts_by_identity_and_stops_units_no_record_names(
    units: Units, tmp_path: Path
) -> None:
    p, pids = start(units, tmp_path)
    stray, stray_pids = start(units, tmp_path, "r2")
    again = Units(tmp_path / "units", grace=1.0)  # what a controller restarted after SIGKILL builds
    assert again.running(p) and again.running(stray)
    assert not again.running(Proc("r1", p.pid, 0, 0.0, [], start=p.start + 1, record=p.record))  # pid reused
    assert again.strays({p.record}) == 1  # its supervisor, which stopped its tree
    assert living(stray_pids) == [] and sorted(living(pids)) == sorted(int(k[1:]) for k in pids if k[0] == "#")
    again.stop([p])
    assert living(pids) == []


def test_a_killed_router_is_restarted_in_place_and_clients_wait_instead_of_failing(
    units: Units, tmp_path: Path
) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "controller.entrypoints.router", "--port", str(port), "--system", "s"]
    pid, st, record = units.spawn("router", cmd, dict(os.environ), tmp_path / "router.log", listen=f"127.0.0.1:{port}")
    p = Proc("router", pid, port, time.time(), [], start=st, record=record)
    health = f"http://127.0.0.1:{port}/-/modship/healthz"
    wait_until(lambda: http_ok(health), timeout=30, what="the router")
    first = {m["process"]: m["pid"] for m in units.members(p)}["router"]
    os.kill(first, signal.SIGKILL)
    r = httpx.get(health, timeout=30)  # connects at once: the supervisor's socket queues it until the new router
    assert r.status_code == 200
    assert units.running(p)
    (crash,) = units.restarted(p)
    assert (crash.process, crash.pid, crash.signal) == ("router", first, "SIGKILL")
    assert units.restarted(p) == [] and p.reported == 1
    units.stop([p])


def test_a_steps_isolated_worker_may_die_without_taking_its_revision_down(units: Units, tmp_path: Path) -> None:
    isolated = "import time; time.sleep(1.5)  # controller.pipeline.worker"
    main = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {isolated!r}]); time.sleep(600)"
    pid, st, record = units.spawn("r1", [sys.executable, "-c", main], dict(os.environ), tmp_path / "r1.log")
    p = Proc("r1", pid, 0, time.time(), [], start=st, record=record)
    wait_until(lambda: len(units.members(p)) == 3, timeout=20, what="the isolated worker")
    wait_until(lambda: len(units.members(p)) == 2, timeout=20, what="the isolated worker gone")
    deadline = time.monotonic() + 2.5  # past the supervisor's full scan: the death has been seen
    while time.monotonic() < deadline:
        assert units.running(p)
        time.sleep(0.1)
    units.stop([p])
