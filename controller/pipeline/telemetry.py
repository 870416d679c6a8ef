"""Per-step metrics (Prometheus) and traces (OpenTelemetry) of a running system.

Metrics carry the labels system, revision, step, module, version. ``modship_step_errors_total``
also has ``reason``: ``exception``, ``timeout``, ``guard_rejected``, ``invalid_output``, and for
isolated steps (``pipeline.isolation``) ``worker_crashed``, ``worker_oom``, ``worker_timeout``,
``worker_unavailable``.

Tracing exports spans to the console by default; set ``MODSHIP_TRACING=otlp`` (and the standard
``OTEL_EXPORTER_OTLP_*`` variables) to send them to a collector, or ``none`` to turn tracing off;
``MODSHIP_TRACING_SAMPLE`` is the share of requests traced (default 1.0). Spans join the trace of
BentoML's request span.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, Protocol

from controller.registry.refstats import TEXT_LENGTH_EDGES

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class Telemetry(Protocol):
    def span(self, name: str, attributes: dict[str, Any]) -> contextlib.AbstractContextManager[Any]: ...
    def step(self, step: str, module: str, seconds: float, *, error: str | None) -> None: ...
    def fallback(self, step: str, module: str, reason: str) -> None: ...
    def cache(self, step: str, module: str, *, hit: bool) -> None: ...
    def prediction(self, step: str, module: str, label: str, confidence: float) -> None: ...
    def evaluation(self, step: str, module: str, *, passed: bool) -> None: ...
    def request(self, seconds: float, outcome: str, input_chars: list[int]) -> None: ...


class NullTelemetry:
    """Records nothing (unit tests, contract tests at build time)."""

    @contextlib.contextmanager
    def span(self, name: str, attributes: dict[str, Any]) -> Iterator[None]:
        yield

    def step(self, step: str, module: str, seconds: float, *, error: str | None) -> None: ...
    def fallback(self, step: str, module: str, reason: str) -> None: ...
    def cache(self, step: str, module: str, *, hit: bool) -> None: ...
    def prediction(self, step: str, module: str, label: str, confidence: float) -> None: ...
    def evaluation(self, step: str, module: str, *, passed: bool) -> None: ...
    def request(self, seconds: float, outcome: str, input_chars: list[int]) -> None: ...


class _Metrics:
    """The metric families, created once per process."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        step = ["system", "revision", "step", "module", "version"]
        sysl = ["system", "revision"]
        self.duration = Histogram("modship_step_duration_seconds", "Step latency", step, buckets=LATENCY_BUCKETS)
        self.errors = Counter("modship_step_errors_total", "Step failures", [*step, "reason"])
        self.fallbacks = Counter("modship_step_fallbacks_total", "Fallbacks taken", [*step, "reason"])
        self.cache_hits = Counter("modship_step_cache_hits_total", "Step cache hits", step)
        self.cache_misses = Counter("modship_step_cache_misses_total", "Step cache misses", step)
        self.confidence = Histogram(
            "modship_prediction_confidence", "Top-class probability", step, buckets=CONFIDENCE_BUCKETS
        )
        self.predicted = Counter("modship_predictions_total", "Predictions by class", [*step, "predicted"])
        self.evaluations = Counter("modship_evaluations_total", "Evaluator verdicts", [*step, "result"])
        self.requests = Counter("modship_requests_total", "Requests by outcome", [*sysl, "outcome"])
        self.request_duration = Histogram(
            "modship_request_duration_seconds", "Request latency", sysl, buckets=LATENCY_BUCKETS
        )
        self.input_chars = Histogram(
            "modship_input_chars", "Input text length (drift)", sysl, buckets=[float(e) for e in TEXT_LENGTH_EDGES[1:]]
        )


_METRICS: _Metrics | None = None


def _metrics() -> _Metrics:
    global _METRICS
    if _METRICS is None:
        _METRICS = _Metrics()
    return _METRICS


class CompactConsoleExporter:
    """One JSON line per span on stdout (orjson, no indentation): the console exporter's
    information at a fraction of its cost. ``MODSHIP_TRACING=console-pretty`` gives OTel's own."""

    def __init__(self) -> None:
        import sys

        self.out = sys.stdout

    def export(self, spans: Any) -> Any:
        import orjson
        from opentelemetry.sdk.trace.export import SpanExportResult

        lines = []
        for s in spans:
            ctx, parent = s.get_span_context(), s.parent
            lines.append(orjson.dumps({
                "name": s.name, "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
                "parent_id": f"{parent.span_id:016x}" if parent else None, "start": s.start_time,
                "duration_ms": round(((s.end_time or s.start_time) - s.start_time) / 1e6, 3),
                "status": s.status.status_code.name, "attributes": dict(s.attributes or {}),
            }))  # fmt: skip
        self.out.write(b"\n".join(lines).decode() + "\n")
        self.out.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _tracer(service: str) -> Any:
    mode = os.environ.get("MODSHIP_TRACING", "console").lower()
    if mode in ("none", "off", ""):
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

    # Our own sampling decision: BentoML's request span (our parent) is unsampled by default, and a
    # parent-based sampler would silently drop every modship span.
    ratio = float(os.environ.get("MODSHIP_TRACING_SAMPLE", "1.0"))
    provider = TracerProvider(resource=Resource.create({"service.name": service}), sampler=TraceIdRatioBased(ratio))
    if mode == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif mode == "console-pretty":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        provider.add_span_processor(BatchSpanProcessor(CompactConsoleExporter()))  # type: ignore[arg-type]
    return provider.get_tracer("modship.pipeline")


class PrometheusTelemetry:
    def __init__(self, system: str, revision: str) -> None:
        self.system, self.revision = system, revision
        self.m = _metrics()
        self.tracer = _tracer(f"modship-{system}")
        self._children: dict[tuple[str, ...], Any] = {}

    def _labels(self, metric: Any, *values: str) -> Any:
        key = (str(id(metric)), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.system, self.revision, *values)
        return child

    @staticmethod
    def _mv(module: str) -> tuple[str, str]:
        name, _, version = module.partition("@")
        return name, version

    def span(self, name: str, attributes: dict[str, Any]) -> contextlib.AbstractContextManager[Any]:
        if self.tracer is None:
            return contextlib.nullcontext()
        return self.tracer.start_as_current_span(name, attributes=attributes)  # type: ignore[no-any-return]

    def step(self, step: str, module: str, seconds: float, *, error: str | None) -> None:
        self._labels(self.m.duration, step, *self._mv(module)).observe(seconds)
        if error:
            self._labels(self.m.errors, step, *self._mv(module), error).inc()

    def fallback(self, step: str, module: str, reason: str) -> None:
        self._labels(self.m.fallbacks, step, *self._mv(module), reason).inc()

    def cache(self, step: str, module: str, *, hit: bool) -> None:
        self._labels(self.m.cache_hits if hit else self.m.cache_misses, step, *self._mv(module)).inc()

    def prediction(self, step: str, module: str, label: str, confidence: float) -> None:
        self._labels(self.m.confidence, step, *self._mv(module)).observe(confidence)
        self._labels(self.m.predicted, step, *self._mv(module), label).inc()

    def evaluation(self, step: str, module: str, *, passed: bool) -> None:
        self._labels(self.m.evaluations, step, *self._mv(module), "pass" if passed else "fail").inc()

    def request(self, seconds: float, outcome: str, input_chars: list[int]) -> None:
        self._labels(self.m.requests, outcome).inc()
        self._labels(self.m.request_duration).observe(seconds)
        hist = self._labels(self.m.input_chars)
        for n in input_chars:
            hist.observe(n)
