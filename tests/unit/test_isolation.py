"""Isolation without worker processes: the framing (a hostile peer cannot make the service unpickle
or overrun anything), the default mode, the backoff, the reading of exit statuses, the spec."""

from __future__ import annotations

import concurrent.futures as cf
import json
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from controller.compose import revision
from controller.errors import SpecError
from controller.pipeline import faults, isolation, values, wire, worker
from controller.pipeline.errors import KernelError
from controller.spec import system as system_spec
from controller.spec.modules import ModuleManifest
from controller.spec.system import Isolation, Limits, Step
from tests.support import modules


@pytest.fixture
def channel() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def raw(header: dict[str, Any], body: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return struct.pack("<II", len(head), len(body)) + head + body


def test_ports_round_trip_as_json_and_raw_buffers(channel: tuple[socket.socket, socket.socket]) -> None:
    a, b = channel
    ports = {
        "text": ["héllo", "wörld"],
        "embedding": np.arange(12, dtype=np.float32).reshape(3, 4),
        "passed": np.array([True, False]),
        "ids": np.arange(5, dtype=">i8"),  # big-endian: sent little-endian
        "nested": [[1, 2.5], [np.float32(3), None]],
        "strings": np.array(["a", "b"]),
    }
    wire.send(a, wire.encode({"op": "call"}, ports))
    header, got = wire.receive(b)
    assert header == {"op": "call"}
    assert got["text"] == ["héllo", "wörld"]
    assert got["embedding"].dtype == np.float32 and (got["embedding"] == ports["embedding"]).all()
    assert got["passed"].tolist() == [True, False]
    assert got["ids"].dtype == np.dtype("<i8") and got["ids"].tolist() == [0, 1, 2, 3, 4]
    assert got["nested"] == [[1, 2.5], [3.0, None]]
    assert got["strings"] == ["a", "b"]


def test_tables_travel_column_by_column(channel: tuple[socket.socket, socket.socket]) -> None:
    a, b = channel
    table = values.Table({"age": np.array([31.0, np.nan]), "city": ["Oslo", None]}, 2)
    wire.send(a, wire.encode({}, {"rows": table}))
    _, got = wire.receive(b)
    assert isinstance(got["rows"], values.Table) and got["rows"].rows == 2
    assert got["rows"]["city"] == ["Oslo", None] and np.array_equal(got["rows"]["age"], table["age"], equal_nan=True)
    a.sendall(raw({"ports": {"t": {"table": {"x": {"json": [1, 2, 3]}}, "rows": 2}}}))
    with pytest.raises(wire.WireError, match="every column must have 2 rows"):
        wire.receive(b)


def test_a_large_batch_travels_in_pieces(channel: tuple[socket.socket, socket.socket]) -> None:
    a, b = channel
    a.setblocking(True)
    x = np.random.default_rng(0).normal(size=(64, 64, 64)).astype(np.float32)  # 1 MiB: more than a buffer
    t = threading.Thread(target=wire.send, args=(a, wire.encode({}, {"x": x})))
    t.start()
    _, got = wire.receive(b)
    t.join()
    assert np.array_equal(got["x"], x)


@pytest.mark.parametrize(
    ("header", "body", "needle"),
    [
        ({"ports": {"x": {"dtype": "|O", "shape": [1], "offset": 0}}}, bytes(8), "dtype '|O' is not allowed"),
        ({"ports": {"x": {"dtype": "<U4", "shape": [1], "offset": 0}}}, bytes(16), "not allowed"),
        ({"ports": {"x": {"dtype": "<f4", "shape": [1000], "offset": 0}}}, bytes(16), "overrun"),
        ({"ports": {"x": {"dtype": "<f4", "shape": [2], "offset": 12}}}, bytes(16), "overrun"),
        ({"ports": {"x": {"dtype": "<f4", "shape": [-1], "offset": 0}}}, bytes(16), "bad shape"),
        ({"ports": {"x": {"dtype": "<f4", "shape": [1] * 9, "offset": 0}}}, bytes(16), "bad shape"),
        ({"ports": {"x": {"json": {"not": "a batch"}}}}, b"", "must be a list"),
        ({"ports": ["x"]}, b"", "'ports' is not an object"),
    ],
)
def test_hostile_messages_are_refused(
    channel: tuple[socket.socket, socket.socket], header: dict[str, Any], body: bytes, needle: str
) -> None:
    a, b = channel
    a.sendall(raw(header, body))
    with pytest.raises(wire.WireError, match=needle):
        wire.receive(b)


def test_oversized_or_broken_frames_are_refused(channel: tuple[socket.socket, socket.socket]) -> None:
    a, b = channel
    a.sendall(struct.pack("<II", 10, wire.MAX_BODY + 1))
    with pytest.raises(wire.WireError, match="too large"):
        wire.receive(b)
    a.sendall(struct.pack("<II", 5, 0) + b"nope!")
    with pytest.raises(wire.WireError, match="not JSON"):
        wire.receive(b)
    a.sendall(struct.pack("<II", 2, 0) + b"[]")
    with pytest.raises(wire.WireError, match="not a JSON object"):
        wire.receive(b)


def test_a_closed_or_silent_peer_ends_the_wait(channel: tuple[socket.socket, socket.socket]) -> None:
    a, b = channel
    with pytest.raises(TimeoutError):
        wire.receive(b, time.monotonic() + 0.05)
    a.sendall(struct.pack("<II", 2, 0))  # a frame cut short
    a.close()
    with pytest.raises(EOFError):
        wire.receive(b)


def test_values_that_cannot_travel_fail_before_anything_is_sent() -> None:
    with pytest.raises(TypeError, match="cannot travel"):
        wire.encode({}, {"x": [object()]})


def manifest(stability: str) -> ModuleManifest:
    return ModuleManifest.model_validate(
        modules.manifest("m", "head", {"x": {"dtype": "float32"}}, {"y": {"dtype": "float32"}}, stability=stability)
    )


@pytest.mark.parametrize(
    ("stability", "stated", "expected"),
    [
        ("experimental", None, Isolation.PROCESS),
        ("stable", None, Isolation.INLINE),
        ("experimental", "inline", Isolation.INLINE),
        ("stable", "process", Isolation.PROCESS),
    ],
)
def test_experimental_modules_run_isolated_unless_the_step_opts_out(
    stability: str, stated: str | None, expected: Isolation
) -> None:
    step = Step.model_validate({"name": "s", "module": "m@1", **({"isolation": stated} if stated else {})})
    assert isolation.mode(step, manifest(stability)) is expected


def test_restarts_back_off_exponentially_up_to_a_cap() -> None:
    delays = [isolation.backoff(n) for n in range(1, 12)]
    assert delays[:4] == [0.0, 0.5, 1.0, 2.0]
    assert delays == sorted(delays) and max(delays) == isolation.BACKOFF_MAX_S


@pytest.mark.parametrize(
    ("code", "kind", "reason", "needle"),
    [
        (-signal.SIGSEGV, isolation.WorkerCrashed, "worker_crashed", "SIGSEGV"),
        (3, isolation.WorkerCrashed, "worker_crashed", "status 3"),
        (None, isolation.WorkerCrashed, "worker_crashed", "closed its channel"),
        (worker.EXIT_OOM, isolation.WorkerOutOfMemory, "worker_oom", "512 MiB"),
        (-signal.SIGKILL, isolation.WorkerOutOfMemory, "worker_oom", "out-of-memory killer"),
        (-signal.SIGXCPU, isolation.WorkerTimeout, "worker_timeout", "CPU time"),
    ],
)
def test_an_exit_status_says_how_the_worker_failed(code: int | None, kind: type, reason: str, needle: str) -> None:
    exc = isolation.failure(code, Limits(memory_mb=512))
    assert type(exc) is kind and isolation.reason(exc) == reason and needle in str(exc)


def test_a_worker_timeout_is_a_timeout_and_a_kernel_error() -> None:
    exc = isolation.WorkerTimeout("late")
    assert isinstance(exc, cf.TimeoutError) and isinstance(exc, KernelError)
    assert isolation.reason(ValueError("x")) is None


def test_the_step_options_parse_and_leave_existing_revisions_alone() -> None:
    steps = [{"name": "head", "module": "head@1", "inputs": {"embedding": "input.text"}}]
    plain = system_spec.from_document(modules.system_doc(steps))
    isolated = system_spec.from_document(
        modules.system_doc([{**steps[0], "isolation": "process", "limits": {"memoryMb": 512, "cpuSeconds": 2}}])
    )
    s = isolated.spec.steps[0]
    assert s.isolation is Isolation.PROCESS and s.limits == Limits(memory_mb=512, cpu_seconds=2)
    assert "isolation" not in plain.spec.steps[0].dump() and "limits" not in plain.spec.steps[0].dump()
    versions = modules.versions()
    assert revision.pin(plain, versions).revision != revision.pin(isolated, versions).revision


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"isolation": "sandbox"}, "spec.steps[0].isolation"),
        ({"limits": {"memoryMb": 1}}, "spec.steps[0].limits.memoryMb"),
        ({"limits": {"cpuSeconds": 0}}, "spec.steps[0].limits.cpuSeconds"),
    ],
)
def test_bad_isolation_options_name_the_field(change: dict[str, Any], field: str) -> None:
    doc = modules.system_doc([{"name": "head", "module": "head@1", "inputs": {"embedding": "input.text"}, **change}])
    with pytest.raises(SpecError) as info:
        system_spec.from_document(doc)
    assert field in str(info.value)


def test_crash_faults_are_deterministic_per_input() -> None:
    draws = [faults.draw({"text": [f"t{i}"]}, "m:crash") for i in range(200)]
    assert draws == [faults.draw({"text": [f"t{i}"]}, "m:crash") for i in range(200)]
    assert 0.35 < sum(d < 0.5 for d in draws) / len(draws) < 0.65
    m = modules.manifest("m", "head", {"x": {"dtype": "float32"}}, {"y": {"dtype": "float32"}})
    m["runtime"]["faults"] = {"crash": "reboot"}
    with pytest.raises(ValueError, match="segfault"):
        ModuleManifest.model_validate(m)
