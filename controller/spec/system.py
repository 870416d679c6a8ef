"""The System spec: a small DAG of steps, each running one module version, with adapters on edges,
fallbacks, caches, guards, feature flags and a latency budget.

    apiVersion: modship.dev/v1alpha1
    kind: System
    metadata: {name: topic-classifier}
    spec:
      input: {text: {dtype: string, shape: [-1]}}
      steps:
        - {name: encoder, module: text-encoder@stable, inputs: {text: input.text}}
        - {name: head, module: topic-head@1, inputs: {embedding: encoder.embedding},
           fallback: {module: topic-head@2, when: [error, timeout]}}

Structural rules are checked here (names, references, cycles); module-level rules (existence,
compatibility, digests, deprecation, stability) are checked against the registry by
``compose.validate``.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from controller.errors import SpecError, SpecErrors
from controller.spec import parse, refs
from controller.spec.base import Spec
from controller.spec.modules import API_VERSION, Port, Stability
from controller.spec.objects import ObjectMeta

STEP_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,40}$")
RESERVED_STEPS = frozenset({"input", "output", "flags"})


def _ref(text: str) -> str:
    try:
        refs.parse(text)
    except Exception as exc:
        raise ValueError(str(getattr(exc, "reason", exc))) from None
    return text


class Trigger(enum.StrEnum):
    ERROR = "error"
    TIMEOUT = "timeout"
    LOW_CONFIDENCE = "lowConfidence"
    GUARD_REJECTED = "guardRejected"


class Fallback(Spec):
    """What to use when a step fails: another module version, or a fixed default output."""

    module: str | None = None
    default: dict[str, Any] | None = None
    when: tuple[Trigger, ...] = Field(
        default=(Trigger.ERROR,), description="triggers; default: error, plus timeout when timeoutMs is set"
    )
    timeout_ms: float | None = Field(default=None, gt=0)
    min_confidence: float | None = Field(default=None, ge=0, le=1)

    _module = field_validator("module")(lambda cls, v: v if v is None else _ref(v))

    @model_validator(mode="before")
    @classmethod
    def _default_triggers(cls, data: Any) -> Any:
        if isinstance(data, dict) and "when" not in data and (data.get("timeoutMs") or data.get("timeout_ms")):
            return {**data, "when": ["error", "timeout"]}
        return data

    @model_validator(mode="after")
    def _one_target(self) -> Fallback:
        if (self.module is None) == (self.default is None):
            raise ValueError("give exactly one of 'module' or 'default'")
        if Trigger.TIMEOUT in self.when and self.timeout_ms is None:
            raise ValueError("trigger 'timeout' needs timeoutMs")
        if Trigger.LOW_CONFIDENCE in self.when and self.min_confidence is None:
            raise ValueError("trigger 'lowConfidence' needs minConfidence")
        return self


class Cache(Spec):
    """A bounded per-step cache keyed by a hash of the step's input and the module digest."""

    enabled: bool = True
    max_entries: int = Field(default=10_000, ge=1, le=10_000_000)
    ttl_seconds: float | None = Field(default=None, gt=0)


class ResponseCache(Spec):
    """Whole answers cached per revision, keyed by the canonical request inputs and the evaluated
    feature flags; only successful answers without a fallback or a shed step are stored."""

    enabled: bool = True
    max_entries: int = Field(default=10_000, ge=1, le=10_000_000)
    ttl_seconds: float | None = Field(default=None, gt=0)


class Batching(Spec):
    """How a step whose module is ``batchable`` shares model calls between concurrent requests."""

    enabled: bool = True
    max_batch_size: int = Field(default=32, ge=1, le=4096, description="rows per model call at most")
    max_latency_ms: float = Field(
        default=0.0, ge=0, le=1000, description="wait this long for company when the model is idle (0: never wait)"
    )


class Isolation(enum.StrEnum):
    """Where a step's module runs: in the service process, or in a worker process of its own."""

    INLINE = "inline"
    PROCESS = "process"


class Limits(Spec):
    """Resource limits of an isolated step's worker process (see ``pipeline.isolation``)."""

    memory_mb: int = Field(default=2048, ge=64, description="memory of the worker (RLIMIT_DATA), MiB")
    cpu_seconds: float = Field(default=30.0, gt=0, description="CPU time one call may use (RLIMIT_CPU)")


class Input(Spec):
    """Where a step input comes from: ``input.<field>`` or ``<step>.<port>``, optionally adapted."""

    from_: str = Field(alias="from")
    adapter: str | None = None

    _adapter = field_validator("adapter")(lambda cls, v: v if v is None else _ref(v))

    @field_validator("from_")
    @classmethod
    def _source(cls, v: str) -> str:
        parts = v.split(".")
        if len(parts) > 2 or not all(STEP_NAME.match(p) for p in parts):
            raise ValueError(f"{v!r} is not a source: use 'input.<field>', '<step>' or '<step>.<port>'")
        return v

    @property
    def step(self) -> str:
        return self.from_.split(".")[0]

    @property
    def port(self) -> str | None:
        parts = self.from_.split(".")
        return parts[1] if len(parts) == 2 else None


class Step(Spec):
    name: str
    module: str
    inputs: dict[str, Input | str] = Field(default_factory=dict)
    fallback: Fallback | None = None
    cache: Cache | None = None
    flag: str | None = Field(default=None, description="run only when this feature flag is on")
    timeout_ms: float | None = Field(default=None, gt=0)
    batching: Batching | None = Field(
        default=None, description="adaptive batching; on by default when the module is batchable"
    )
    isolation: Isolation | None = Field(
        default=None, description="inline or process (default: process for experimental modules, else inline)"
    )
    limits: Limits | None = Field(default=None, description="limits of the isolated worker (default: Limits())")

    _module = field_validator("module")(lambda cls, v: _ref(v))

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not STEP_NAME.match(v) or v in RESERVED_STEPS:
            raise ValueError(f"invalid step name {v!r}: lowercase letters, digits, '_', '-'; not input/output")
        return v

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: {"from": x} if isinstance(x, str) else x for k, x in v.items()}
        return v

    def wired(self) -> dict[str, Input]:
        return {k: v if isinstance(v, Input) else Input.model_validate({"from": v}) for k, v in self.inputs.items()}


class InputGuard(Spec):
    max_chars: int = Field(default=10_000, ge=1)
    min_chars: int = Field(default=1, ge=0)
    max_batch: int = Field(default=64, ge=1)
    strip_control: bool = True
    normalize_unicode: bool = True
    deny_patterns: tuple[str, ...] = ()

    @field_validator("deny_patterns")
    @classmethod
    def _patterns(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for p in v:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"pattern {p!r} does not compile: {exc}") from None
        return v


class OutputGuard(Spec):
    redact_patterns: tuple[str, ...] = ()
    max_chars: int | None = Field(default=None, ge=1)

    _patterns = field_validator("redact_patterns")(lambda cls, v: InputGuard._patterns(v))


class Guards(Spec):
    input: InputGuard = InputGuard()
    output: OutputGuard = OutputGuard()


class Flag(Spec):
    """A named switch turning optional steps on or off per request."""

    name: str
    enabled: bool = True
    percent: float = Field(default=100.0, ge=0, le=100)
    header: str | None = Field(default=None, description="request header overriding it (on/off)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not STEP_NAME.match(v):
            raise ValueError(f"invalid flag name {v!r}")
        return v

    @property
    def header_name(self) -> str:
        return (self.header or f"x-modship-flag-{self.name}").lower()


class SmokeExpect(Spec):
    label: str | None = None
    min_confidence: float | None = Field(default=None, ge=0, le=1)


class SmokeCase(Spec):
    """A system-level check run before a build succeeds: an input and what must come out."""

    input: dict[str, Any]
    expect: SmokeExpect = SmokeExpect()


class SystemBody(Spec):
    input: dict[str, Port] = Field(default_factory=lambda: {"text": Port(dtype="string", shape=(-1,))})
    output: str | None = Field(default=None, description="the step whose outputs answer (default: last)")
    steps: list[Step] = Field(min_length=1)
    guards: Guards = Guards()
    flags: list[Flag] = Field(default_factory=list)
    latency_budget_ms: float | None = Field(
        default=None, gt=0, description="past it, optional (flagged) steps are shed for the request"
    )
    stability: Stability = Stability.STABLE
    allow_experimental: tuple[str, ...] = ()
    smoke: list[SmokeCase] = Field(default_factory=list)
    cache: ResponseCache | None = Field(
        default=None, description="a response cache in front of the pipeline (a hit skips every step)"
    )

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    @property
    def output_step(self) -> str:
        return self.output or self.steps[-1].name


class System(Spec):
    api_version: Literal["modship.dev/v1alpha1"] = API_VERSION
    kind: Literal["System"] = "System"
    metadata: ObjectMeta
    spec: SystemBody


def from_document(data: Any, *, source: str | None = None) -> System:
    """A System from a parsed document: schema errors, then every structural problem, as SpecErrors."""
    system = parse.to_model(System, data, source=source)
    problems = [SpecError(m, field=f"spec.{f}", source=source) for f, m in structure_problems(system.spec)]
    if problems:
        raise problems[0] if len(problems) == 1 else SpecErrors(problems)
    return system


def load(path: Path) -> System:
    docs = parse.load_documents(path)
    if len(docs) != 1:
        raise SpecError(f"expected one System document, found {len(docs)}", source=str(path))
    return from_document(docs[0], source=str(path))


def structure_problems(body: SystemBody) -> list[tuple[str, str]]:
    """(field, reason) for every structural problem: duplicates, dangling sources, cycles, flags."""
    problems: list[tuple[str, str]] = []
    names = [s.name for s in body.steps]
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            problems.append((f"steps[{i}].name", f"duplicate step name {n!r}"))
        seen.add(n)
    flags = {f.name for f in body.flags}
    if len(flags) != len(body.flags):
        problems.append(("flags", "duplicate flag names"))
    for i, s in enumerate(body.steps):
        for port, src in s.wired().items():
            if src.step == "input":
                if src.port is None or src.port not in body.input:
                    problems.append(
                        (f"steps[{i}].inputs.{port}", f"no system input {src.port!r} (has {sorted(body.input)})")
                    )
            elif src.step not in seen:
                problems.append((f"steps[{i}].inputs.{port}", f"unknown step {src.step!r}"))
            elif src.step == s.name:
                problems.append((f"steps[{i}].inputs.{port}", "a step cannot feed itself"))
        if s.flag is not None and s.flag not in flags:
            problems.append((f"steps[{i}].flag", f"unknown flag {s.flag!r} (declare it under spec.flags)"))
    if body.output is not None and body.output not in seen:
        problems.append(("output", f"unknown step {body.output!r}"))
    if not problems:
        cycle = _cycle(body)
        if cycle:
            problems.append(("steps", f"the steps form a cycle: {' -> '.join(cycle)}"))
    return problems


def _cycle(body: SystemBody) -> list[str] | None:
    deps = {s.name: [w.step for w in s.wired().values() if w.step != "input"] for s in body.steps}
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> list[str] | None:
        if state.get(n) == 1:
            return [*path[path.index(n) :], n]
        if state.get(n) == 2:
            return None
        state[n] = 1
        for d in deps.get(n, []):
            found = visit(d, [*path, n])
            if found:
                return found
        state[n] = 2
        return None

    for n in deps:
        found = visit(n, [])
        if found:
            return found
    return None


def topological(body: SystemBody) -> list[str]:
    """Step names in an order where every step comes after the steps it reads from (stable)."""
    deps = {s.name: {w.step for w in s.wired().values() if w.step != "input"} for s in body.steps}
    order: list[str] = []
    while len(order) < len(deps):
        ready = [n for n in deps if n not in order and deps[n] <= set(order)]
        order.extend(ready)
    return order
