"""Isolated steps against real worker processes: the four crashes of a module inside a request fail
that step only (its fallback answers, the worker restarts, the failure is counted); inline, the same
crash takes the process down; workers never outlive the service."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.pipeline.engine import BadRequest, Pipeline, module_dir
from controller.pipeline.isolation import ProcessKernel, WorkerUnavailable
from tests.support import modules
from tests.support.isolated import Recorder, alive, guard, pick, pipeline
from tests.support.services import wait_until

REPO = Path(__file__).resolve().parents[2]
RATE = 0.5
REASONS = {"segfault": "worker_crashed", "exit": "worker_crashed", "oom": "worker_oom", "hang": "worker_timeout"}
BAD, GOOD = pick("shaky", RATE, crashing=True), pick("shaky", RATE, crashing=False)


def faulty(tmp: Path, crash: str, *, isolation: str | None = None, **kw: Any) -> Pipeline:
    """One step running ``shaky@1`` (experimental: isolated by default) that crashes on half of its
    inputs, with ``steady@1`` as its fallback for errors and timeouts."""
    manifests = {
        "shaky@1": guard("shaky", stability="experimental", faults={"crash": crash, "crashRate": RATE}),
        "steady@1": guard("steady"),
    }
    step: dict[str, Any] = {
        "name": "guard",
        "module": "shaky@1",
        "inputs": {"text": "input.text"},
        "fallback": {"module": "steady@1", "timeoutMs": 2000},
        "limits": {"memoryMb": 512, "cpuSeconds": 5},
    }
    if isolation:
        step["isolation"] = isolation
    return pipeline(tmp, manifests, [step], **kw)


def worker(pipe: Pipeline, step: str = "guard") -> ProcessKernel:
    kernel = next(st.kernel for st in pipe.steps if st.spec.name == step)
    assert isinstance(kernel, ProcessKernel)
    return kernel


@pytest.mark.parametrize("crash", list(REASONS))
def test_a_crash_inside_a_request_fails_that_step_only(tmp_path: Path, crash: str) -> None:
    rec = Recorder()
    pipe = faulty(tmp_path, crash, telemetry=rec)
    try:
        first = worker(pipe).pid
        assert first is not None and alive(first)
        assert pipe.predict({"text": GOOD}).fallbacks == []

        out = pipe.predict({"text": BAD})
        reason = "timeout" if crash == "hang" else "error"
        assert out.fallbacks == [{"step": "guard", "reason": reason, "used": "steady@1"}]
        assert out.outputs == {"text": [BAD]}  # the fallback answered
        assert ("error", "guard", "shaky@1", REASONS[crash]) in rec.events
        assert ("fallback", "guard", "shaky@1", reason) in rec.events
        assert not alive(first)

        # the worker was restarted: a later request is answered by the isolated module again
        wait_until(lambda: pipe.predict({"text": GOOD}).fallbacks == [], timeout=60, what="a restarted worker")
        assert worker(pipe).pid not in (None, first)
        assert rec.events.count(("error", "guard", "shaky@1", REASONS[crash])) == 1
    finally:
        pipe.close()


def test_the_same_segfault_inline_takes_the_process_down(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        from pathlib import Path
        from tests.integration.test_isolation import faulty
        pipe = faulty(Path({str(tmp_path)!r}), "segfault", isolation="inline")
        pipe.predict({{"text": {GOOD!r}}})
        print("answered", flush=True)
        pipe.predict({{"text": {BAD!r}}})
        print("survived", flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGSEGV, proc.stderr.decode()[-2000:]
    assert proc.stdout.split() == [b"answered"]


def test_module_errors_and_guard_rejections_travel_back_without_a_restart(tmp_path: Path) -> None:
    manifests = {
        "picky@1": guard("picky", stability="experimental", params={"deny_patterns": ["forbidden"]}),
        "flaky@1": guard("flaky", stability="experimental", faults={"errorRate": 1.0}),
        "steady@1": guard("steady"),
    }
    steps = [
        {"name": "picky", "module": "picky@1", "inputs": {"text": "input.text"}},
        {"name": "flaky", "module": "flaky@1", "inputs": {"text": "picky.text"}, "fallback": {"module": "steady@1"}},
    ]
    rec = Recorder()
    pipe = pipeline(tmp_path, manifests, steps, telemetry=rec)
    try:
        pids = (worker(pipe, "picky").pid, worker(pipe, "flaky").pid)
        with pytest.raises(BadRequest, match="denied pattern"):
            pipe.predict({"text": "a forbidden word"})
        out = pipe.predict({"text": "fine words"})
        assert out.fallbacks == [{"step": "flaky", "reason": "error", "used": "steady@1"}]
        assert ("error", "flaky", "flaky@1", "exception") in rec.events
        assert (worker(pipe, "picky").pid, worker(pipe, "flaky").pid) == pids  # no restart
    finally:
        pipe.close()


def test_concurrent_calls_are_serialised_and_each_gets_its_own_answer(tmp_path: Path) -> None:
    pipe = pipeline(
        tmp_path,
        {"g@1": guard("g")},
        [{"name": "g", "module": "g@1", "inputs": {"text": "input.text"}, "isolation": "process"}],
    )
    try:
        texts = [f"text {i}" for i in range(200)]
        with cf.ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda t: pipe.predict({"text": [t, t + "!"]}).outputs["text"], texts))
        assert outs == [[t, t + "!"] for t in texts]
    finally:
        pipe.close()


def test_workers_stop_with_the_pipeline_and_die_with_the_service(tmp_path: Path) -> None:
    pipe = faulty(tmp_path / "closed", "exit")
    pid = worker(pipe).pid
    assert pid is not None and alive(pid)
    pipe.close()
    assert not alive(pid)

    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from tests.integration.test_isolation import faulty, worker
        pipe = faulty(Path({str(tmp_path / "killed")!r}), "exit")
        print(worker(pipe).pid, flush=True)
        sys.stdin.read()
    """)
    service = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert service.stdout is not None
        pid = int(service.stdout.readline())
        assert alive(pid)
        os.kill(service.pid, signal.SIGKILL)  # no chance to clean up: the kernel must do it
        service.wait(timeout=10)
        wait_until(lambda: not alive(pid), timeout=10, what=f"worker {pid} gone")
    finally:
        service.kill()
        service.wait()


def test_repeated_crashes_back_off_and_calls_meanwhile_fail_fast(tmp_path: Path) -> None:
    manifests = {
        "doomed@1": guard("doomed", stability="experimental", faults={"crash": "exit"}),  # every input
        "steady@1": guard("steady"),
    }
    step = {"name": "g", "module": "doomed@1", "inputs": {"text": "input.text"}, "fallback": {"module": "steady@1"}}
    rec = Recorder()
    pipe = pipeline(tmp_path, manifests, [step], telemetry=rec)
    try:
        for _ in range(2):  # the first failure restarts at once; the restarted worker crashes too
            assert pipe.predict({"text": "hello"}).fallbacks[0]["used"] == "steady@1"
        assert worker(pipe, "g").pid is None  # backing off: no worker for now
        out = pipe.predict({"text": "hello"})
        assert out.fallbacks == [{"step": "g", "reason": "error", "used": "steady@1"}]
        errors = [e[3] for e in rec.events if e[0] == "error"]
        assert errors == ["worker_crashed", "worker_crashed", "worker_unavailable"]
    finally:
        pipe.close()


def test_a_module_that_does_not_load_in_its_worker_stops_the_load(tmp_path: Path) -> None:
    broken = guard("broken", stability="experimental")
    broken["runtime"] = {"kind": "softmax-linear", "files": {"weights": "missing.npz"}}
    step = {"name": "g", "module": "broken@1", "inputs": {"text": "input.text"}}
    with pytest.raises(WorkerUnavailable, match=r"broken: the isolated worker did not start: .*missing\.npz"):
        pipeline(tmp_path, {"broken@1": broken}, [step])


COMPONENT = '''
import ctypes

import numpy as np


class Risky:
    """Third-party code with a native bug on some inputs."""

    def __init__(self, root, params):
        self.prefix = params["prefix"]

    def __call__(self, batch):
        texts = batch["text"]
        if any("segv" in t for t in texts):
            ctypes.string_at(0)
        while any("spin" in t for t in texts):
            pass
        return {"text": [self.prefix + t for t in texts], "length": np.array([len(t) for t in texts], np.float32)}
'''


def test_an_untrusted_python_component_that_segfaults_or_spins_fails_its_step_only(tmp_path: Path) -> None:
    ports = {"text": modules.port("string"), "length": modules.port("float32", [-1])}
    risky = modules.manifest("risky", "guard", {"text": modules.port("string")}, ports, kind="python")
    risky["runtime"].update(entrypoint="component.py:Risky", params={"prefix": "> "})
    step = {
        "name": "risky",
        "module": "risky@1",
        "inputs": {"text": "input.text"},
        "isolation": "process",  # a stable module, isolated because the step says so
        "limits": {"cpuSeconds": 1},
        "fallback": {"default": {"text": "unavailable", "length": 0.0}, "timeoutMs": 60_000},
    }
    rec = Recorder()
    files = {"risky@1": {"component.py": COMPONENT}}
    pipe = pipeline(tmp_path, {"risky@1": risky}, [step], files=files, telemetry=rec)
    try:
        assert pipe.predict({"text": ["ab", "cde"]}).outputs == {"text": ["> ab", "> cde"], "length": [2.0, 3.0]}
        out = pipe.predict({"text": "please segv"})
        assert out.outputs == {"text": ["unavailable"], "length": [0.0]}
        assert ("error", "risky", "risky@1", "worker_crashed") in rec.events
        wait_until(lambda: pipe.predict({"text": "fine"}).outputs["text"] == ["> fine"], timeout=60, what="restart")

        started = time.monotonic()  # a busy loop: stopped by the CPU-time limit, long before the deadline
        out = pipe.predict({"text": "spin forever"})
        assert out.fallbacks == [{"step": "risky", "reason": "timeout", "used": "default"}]
        assert ("error", "risky", "risky@1", "worker_timeout") in rec.events
        assert time.monotonic() - started < 30
    finally:
        pipe.close()


@pytest.mark.parametrize("rows", [1, 32])
def test_an_isolated_head_answers_exactly_as_inline(tmp_path: Path, rows: int) -> None:
    head = modules.head_manifest("topic-head")
    step = {"name": "head", "module": "topic-head@1", "inputs": {"embedding": "input.embedding"}}
    doc = {"embedding": {"dtype": "float32", "shape": [-1, 384]}}
    x = np.random.default_rng(rows).normal(size=(rows, 384)).astype(np.float32).tolist()
    outs = []
    for mode in ("inline", "process"):
        root = tmp_path / mode
        modules.write(module_dir(root, "topic-head@1"), head)
        pipe = pipeline(root, {"topic-head@1": head}, [{**step, "isolation": mode}], spec={"input": doc})
        try:
            assert isinstance(pipe.steps[0].kernel, ProcessKernel) is (mode == "process")
            outs.append(pipe.predict({"embedding": x}))
        finally:
            pipe.close()
    assert outs[0].outputs == outs[1].outputs and outs[0].prediction == outs[1].prediction
    assert len(outs[1].outputs["probs"]) == rows
