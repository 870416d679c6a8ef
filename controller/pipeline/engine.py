"""Run a locked System: steps in dependency order, with adapters, caches, fallbacks, guards and
feature flags, recording per-step metrics and spans.

    pipe = Pipeline.load(lock, modules_root)          # verifies every digest first
    outcome = pipe.predict({"text": ["Shares rose..."]}, headers={})
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from controller.compose.revision import Lock, PinnedModule, step_refs
from controller.errors import ModshipError
from controller.pipeline import batching, cache, flags, guards, isolation, kernels, values
from controller.pipeline.errors import BadRequest
from controller.pipeline.telemetry import NullTelemetry, Telemetry
from controller.registry import digests
from controller.spec.modules import Role
from controller.spec.system import Batching, Isolation, Step, Trigger

__all__ = ["BadRequest", "Outcome", "Pipeline", "StepFailed", "batched", "module_dir"]


class StepFailed(ModshipError):
    """A step failed and had no fallback for the trigger (HTTP 500)."""


def module_dir(root: Path, ref: str) -> Path:
    return root / ref.replace("@", "-")


@dataclass
class Outcome:
    outputs: dict[str, Any]
    prediction: list[dict[str, Any]] | None = None
    evaluation: list[dict[str, Any]] | None = None
    fallbacks: list[dict[str, str]] = field(default_factory=list)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    flags: dict[str, bool] = field(default_factory=dict)
    over_budget: bool = False  # the latency budget ran out: optional (flagged) steps were shed


@dataclass(frozen=True)
class _Step:
    spec: Step
    module: PinnedModule
    kernel: kernels.Kernel
    sources: dict[str, tuple[str, str]]  # input port -> (step or "input", port)
    adapters: dict[str, tuple[str, kernels.Kernel]]
    fallback_kernel: tuple[str, kernels.Kernel] | None
    cache: cache.LRU | None
    timeout_s: float | None


class Pipeline:
    def __init__(
        self,
        lock: Lock,
        loaded: dict[str, kernels.Kernel],
        *,
        telemetry: Telemetry | None = None,
        flags_file: Path | None = None,
        workers: int = 4,
        isolated: dict[str, isolation.ProcessKernel] | None = None,
    ) -> None:
        self.lock = lock
        self._isolated = isolated or {}  # step name -> its module in a worker process
        self.telemetry: Telemetry = telemetry or NullTelemetry()
        body = lock.system.spec
        self.body = body
        self.flags = flags.Flags(body.flags, flags_file)
        self._pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="modship-step")
        self.steps = [self._plan(body.step(n), loaded) for n in _order(lock)]
        self.output_step = body.output_step
        self._guard = guards.InputGuard(body)
        self._redact = [re.compile(p) for p in body.guards.output.redact_patterns]

    @classmethod
    def load(cls, lock: Lock, modules_root: Path, *, verify: bool = True, **kw: Any) -> Pipeline:
        """Load every module's kernel; with ``verify``, refuse (IntegrityError) on any digest mismatch.
        A step isolated in a worker (``isolation``) gets a worker of its own; its module is loaded in
        this process only if something else (an inline step, adapter or fallback) uses it too."""
        loaded: dict[str, kernels.Kernel] = {}
        isolated_steps = _isolated_steps(lock)
        inline_refs = _inline_refs(lock, isolated_steps)
        for ref, m in lock.modules.items():
            root = module_dir(modules_root, ref)
            if verify:
                digests.verify(root, m.files, what=ref)
            if ref in inline_refs:
                loaded[ref] = kernels.load(root, m.manifest)
        workers: dict[str, isolation.ProcessKernel] = {}
        try:
            for s in isolated_steps:
                m = lock.module(s.module)
                workers[s.name] = isolation.start(module_dir(modules_root, s.module), m.manifest, s, _timeout_ms(s))
            return cls(lock, batched(lock, loaded), isolated=workers, **kw)
        except BaseException:
            isolation.close_all(workers)
            raise

    def _plan(self, s: Step, loaded: dict[str, kernels.Kernel]) -> _Step:
        module = self.lock.module(s.module)
        sources, adapters = {}, {}
        for port, w in s.wired().items():
            src_port = w.port or next(iter(self._outputs_of(w.step)))
            sources[port] = (w.step, src_port)
            if w.adapter:
                adapters[port] = (w.adapter, loaded[w.adapter])
        fb = s.fallback
        fb_kernel = (fb.module, loaded[fb.module]) if fb is not None and fb.module is not None else None
        timeout_ms = _timeout_ms(s)
        lru = cache.LRU(s.cache.max_entries, s.cache.ttl_seconds) if s.cache and s.cache.enabled else None
        worker = self._isolated.get(s.name)
        if worker is not None:  # the worker enforces the deadline itself (and kills a hung module)
            return _Step(s, module, worker, sources, adapters, fb_kernel, lru, None)
        return _Step(
            s, module, loaded[s.module], sources, adapters, fb_kernel, lru, timeout_ms / 1000 if timeout_ms else None
        )

    def _outputs_of(self, step: str) -> dict[str, Any]:
        if step == "input":
            return dict(self.body.input)
        return dict(self.lock.module(self.body.step(step).module).manifest.contract.outputs)

    # -- request path ----------------------------------------------------------------------------
    def predict(
        self, inputs: Mapping[str, Any], *, headers: Mapping[str, str] | None = None, request_key: str | None = None
    ) -> Outcome:
        started = time.perf_counter()
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        key = request_key or headers.get("x-request-id") or uuid.uuid4().hex
        chars: list[int] = []
        try:
            batch = self._guard.check(inputs, chars)
            with self.telemetry.span(
                "modship.predict", {"modship.system": self.lock.name, "modship.revision": self.lock.revision}
            ):
                outcome = self._run(batch, self.flags.evaluate(headers, key))
        except BadRequest:
            self.telemetry.request(time.perf_counter() - started, "client_error", chars)
            raise
        except Exception:
            self.telemetry.request(time.perf_counter() - started, "error", chars)
            raise
        self.telemetry.request(time.perf_counter() - started, "ok", chars)
        return outcome

    def _run(self, batch: dict[str, Any], flag_values: dict[str, bool]) -> Outcome:
        values: dict[tuple[str, str], Any] = {("input", k): v for k, v in batch.items()}
        outcome = Outcome(outputs={}, flags=flag_values)
        skipped: set[str] = set()
        produced_by: dict[str, str] = {}
        started = time.perf_counter()
        budget = self.body.latency_budget_ms / 1000 if self.body.latency_budget_ms else None
        for st in self.steps:
            s = st.spec
            over = budget is not None and time.perf_counter() - started > budget
            if over and s.flag is not None and s.name != self.output_step and not outcome.over_budget:
                outcome.over_budget = True
                self.telemetry.fallback(s.name, st.module.ref, "latencyBudget")
            if (
                (s.flag is not None and not flag_values.get(s.flag, True))
                or (over and s.flag is not None and s.name != self.output_step)  # optional: shed when late
                or any(src in skipped for src, _ in st.sources.values())
            ):
                skipped.add(s.name)
                outcome.steps[s.name] = {"module": st.module.ref, "skipped": True}
                continue
            inputs = {}
            for port, (src, src_port) in st.sources.items():
                v = values[(src, src_port)]
                if port in st.adapters:
                    ref, ad = st.adapters[port]
                    v = next(
                        iter(
                            self._call(
                                s.name, ref, ad, {next(iter(self.lock.module(ref).manifest.contract.inputs)): v}
                            ).values()
                        )
                    )
                inputs[port] = v
            out, used, info = self._execute(st, inputs, outcome)
            outcome.steps[s.name] = info
            produced_by[s.name] = used
            for port, v in out.items():
                values[(s.name, port)] = v
            self._observe(st, used, out, outcome)
        if self.output_step in skipped:
            raise StepFailed(f"the output step {self.output_step!r} was skipped by a feature flag")
        out_step = next(st for st in self.steps if st.spec.name == self.output_step)
        outcome.outputs = self._sanitize(
            {p: values[(self.output_step, p)] for p in out_step.module.manifest.contract.outputs}
        )
        return outcome

    def _execute(
        self, st: _Step, inputs: dict[str, Any], outcome: Outcome
    ) -> tuple[dict[str, Any], str, dict[str, Any]]:
        s, fb = st.spec, st.spec.fallback
        info: dict[str, Any] = {"module": st.module.ref}
        key = cache.key(st.module.digest, inputs) if st.cache is not None else None
        if st.cache is not None:
            assert key is not None
            hit = st.cache.get(key)
            self.telemetry.cache(s.name, st.module.ref, hit=hit is not None)
            if hit is not None:
                info["cached"] = True
                return hit, st.module.ref, info
        reason: str | None = None
        error: BaseException | None = None
        try:
            out = self._call(s.name, st.module.ref, st.kernel, inputs, timeout=st.timeout_s)
            if fb is not None and Trigger.LOW_CONFIDENCE in fb.when and fb.min_confidence is not None:
                conf = _confidence(out, st.module)
                if conf is not None and conf < fb.min_confidence:
                    reason = "lowConfidence"
        except cf.TimeoutError as exc:
            reason, error = "timeout", exc
        except kernels.GuardRejected as exc:
            reason, error = "guardRejected", exc
        except Exception as exc:
            reason, error = "error", exc
        if reason is None:
            if st.cache is not None and key is not None:
                st.cache.put(key, out)
            return out, st.module.ref, info
        if fb is None or Trigger(reason) not in fb.when:
            if isinstance(error, kernels.GuardRejected):
                raise BadRequest(f"step {s.name}: {error}") from error
            if reason == "lowConfidence":
                return out, st.module.ref, info
            raise StepFailed(f"step {s.name} ({st.module.ref}) failed: {reason}: {error}") from error
        self.telemetry.fallback(s.name, st.module.ref, reason)
        info.update(fallback=reason)
        if fb.default is not None:
            n = values.size(next(iter(inputs.values())))
            out = {p: _repeat(v, n) for p, v in fb.default.items()}
            outcome.fallbacks.append({"step": s.name, "reason": reason, "used": "default"})
            return out, st.module.ref, info
        assert st.fallback_kernel is not None
        ref, kernel = st.fallback_kernel
        outcome.fallbacks.append({"step": s.name, "reason": reason, "used": ref})
        info["module"] = ref
        return self._call(s.name, ref, kernel, inputs), ref, info

    def _call(
        self, step: str, ref: str, kernel: kernels.Kernel, inputs: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        started = time.perf_counter()
        error: str | None = None
        try:
            with self.telemetry.span(f"step {step}", {"modship.step": step, "modship.module": ref}):
                out = kernel(inputs) if timeout is None else self._pool.submit(kernel, inputs).result(timeout)
                _check_finite(out)
                return out
        except cf.TimeoutError as exc:
            error = isolation.reason(exc) or "timeout"
            raise
        except kernels.GuardRejected:
            error = "guard_rejected"
            raise
        except Exception as exc:
            error = isolation.reason(exc) or ("invalid_output" if isinstance(exc, _InvalidOutput) else "exception")
            raise
        finally:
            self.telemetry.step(step, ref, time.perf_counter() - started, error=error)

    def _observe(self, st: _Step, used: str, out: dict[str, Any], outcome: Outcome) -> None:
        manifest = self.lock.module(used).manifest
        if manifest.role is Role.EVALUATOR and "passed" in out:
            passed = [bool(x) for x in np.asarray(out["passed"]).tolist()]
            scores = np.asarray(out.get("score", [math.nan] * len(passed)), dtype=float).tolist()
            for p in passed:
                self.telemetry.evaluation(st.spec.name, used, passed=p)
            outcome.evaluation = [
                {"step": st.spec.name, "score": round(sc, 6), "passed": p} for sc, p in zip(scores, passed, strict=True)
            ]
        if st.spec.name != self.output_step:
            return
        for port, spec in manifest.contract.outputs.items():
            if spec.labels and port in out:
                probs = np.asarray(out[port], dtype=np.float64)
                preds = []
                for row in probs:
                    i = int(row.argmax())
                    preds.append({"label": spec.labels[i], "confidence": round(float(row[i]), 6)})
                    self.telemetry.prediction(st.spec.name, used, spec.labels[i], float(row[i]))
                outcome.prediction = preds
                return

    def _sanitize(self, outputs: dict[str, Any]) -> dict[str, Any]:
        out = {}
        limit = self.body.guards.output.max_chars
        for k, v in outputs.items():
            if isinstance(v, list):
                out[k] = [self._clean(x, limit) if isinstance(x, str) else x for x in v]
            else:
                out[k] = values.encode(v)
        return out

    def _clean(self, text: str, limit: int | None) -> str:
        for p in self._redact:
            text = p.sub("[redacted]", text)
        return text if limit is None else text[:limit]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        isolation.close_all(self._isolated)


class _InvalidOutput(ValueError):
    pass


def _check_finite(out: dict[str, Any]) -> None:
    for port, v in out.items():
        if isinstance(v, np.ndarray) and v.dtype.kind == "f" and not np.isfinite(v).all():
            raise _InvalidOutput(f"output {port!r} holds NaN or infinity")


def _confidence(out: dict[str, Any], module: PinnedModule) -> float | None:
    for port, spec in module.manifest.contract.outputs.items():
        if spec.labels and port in out:
            return float(np.asarray(out[port]).max(axis=1).min())
    return None


def _repeat(v: Any, n: int) -> Any:
    arr = np.asarray(v)
    if arr.dtype.kind in "fiub":
        return np.repeat(arr[None, ...].astype(np.float32 if arr.dtype.kind == "f" else arr.dtype), n, axis=0)
    return [v] * n


def batched(lock: Lock, loaded: dict[str, kernels.Kernel]) -> dict[str, kernels.Kernel]:
    """Kernels of batchable modules wrapped in an adaptive batcher (one per module version, shared
    by the steps that use it), unless a step turns batching off."""
    out = dict(loaded)
    settings: dict[str, Batching] = {}
    off: set[str] = set()
    for s in lock.system.spec.steps:
        if s.batching is not None and not s.batching.enabled:
            off.add(s.module)
        settings.setdefault(s.module, s.batching or Batching())
    for ref, kernel in loaded.items():
        if lock.module(ref).manifest.runtime.batchable and ref not in off:
            b = settings.get(ref, Batching())
            out[ref] = batching.Batcher(
                kernel, max_batch=b.max_batch_size, max_latency_ms=b.max_latency_ms, inflight=batching.cores()
            )
    return out


def _timeout_ms(s: Step) -> float | None:
    return s.timeout_ms or (s.fallback.timeout_ms if s.fallback is not None else None)


def _isolated_steps(lock: Lock) -> list[Step]:
    return [s for s in lock.system.spec.steps if isolation.mode(s, lock.module(s.module).manifest) is Isolation.PROCESS]


def _inline_refs(lock: Lock, isolated_steps: list[Step]) -> set[str]:
    """Refs something runs in this process: all but the modules that only isolated steps run."""
    names = {s.name for s in isolated_steps}
    used: set[str] = set()
    for s in lock.system.spec.steps:
        refs = step_refs(s)  # [module, *adapters, fallback]
        used.update(refs[1:] if s.name in names else refs)
    return used


def _order(lock: Lock) -> list[str]:
    from controller.spec.system import topological

    return topological(lock.system.spec)
