"""Check a System against resolved module versions: every edge, fallback, adapter and policy.

Pure: the caller resolves refs (``resolve`` returns a ModuleVersion or the reason it cannot) and
says what today is. Every violation is returned with its step, field and reason.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from controller.registry import compat, requirements
from controller.registry.versions import ModuleVersion
from controller.spec.modules import Port, Role, Stability
from controller.spec.system import Fallback, Step, System

Resolver = Callable[[str], "ModuleVersion | str"]


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule. ``kind`` says what kind: ``compat`` (types or meaning on an edge or a
    fallback: the only kind ``--force`` may override), ``policy`` (deprecation, stability),
    ``spec`` (references, wiring, roles), ``integrity`` (digests) or ``requirements`` (two
    modules need versions of one package that cannot be installed together)."""

    step: str
    field: str
    reason: str
    kind: str = "spec"

    def __str__(self) -> str:
        return f"step {self.step}: {self.field}: {self.reason}" if self.step else f"{self.field}: {self.reason}"

    def to_json(self) -> dict[str, str]:
        return {"step": self.step, "field": self.field, "reason": self.reason, "kind": self.kind}


@dataclass(frozen=True, slots=True)
class Edge:
    """One checked connection: source port -> (adapter ->) step input port."""

    step: str
    port: str
    source: str
    producer: str
    consumer: str
    adapter: str | None
    problems: tuple[compat.Problem, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "step": self.step,
            "port": self.port,
            "from": self.source,
            "producer": self.producer,
            "consumer": self.consumer,
            "adapter": self.adapter,
            "compatible": not self.problems,
            "problems": [{"field": p.field, "reason": p.reason} for p in self.problems],
        }


@dataclass(frozen=True, slots=True)
class Report:
    resolved: dict[str, ModuleVersion]
    edges: tuple[Edge, ...]
    violations: tuple[Violation, ...]

    @property
    def ok(self) -> bool:
        return not self.violations


def check(system: System, resolve: Resolver, *, today: dt.date) -> Report:
    body = system.spec
    resolved: dict[str, ModuleVersion] = {}
    violations: list[Violation] = []

    def get(ref: str, step: str, field: str, role: Role | None = None) -> ModuleVersion | None:
        if ref not in resolved:
            got = resolve(ref)
            if isinstance(got, str):
                violations.append(Violation(step, field, got))
                return None
            resolved[ref] = got
        mv = resolved[ref]
        if role is not None and mv.manifest.role is not role:
            violations.append(
                Violation(step, field, f"{mv.ref} has role {mv.manifest.role.value}, expected {role.value}")
            )
        violations.extend(_policies(mv, system, step, field, today))
        return mv

    modules: dict[str, ModuleVersion] = {}
    for i, s in enumerate(body.steps):
        mv = get(s.module, s.name, f"steps[{i}].module")
        if mv is not None:
            modules[s.name] = mv

    edges: list[Edge] = []
    for i, s in enumerate(body.steps):
        mv = modules.get(s.name)
        if mv is None:
            continue
        wired = s.wired()
        for port in sorted(set(mv.manifest.contract.inputs) - set(wired)):
            violations.append(Violation(s.name, f"steps[{i}].inputs", f"input port {port!r} of {mv.ref} is not wired"))
        for port, src in wired.items():
            consumer = mv.manifest.contract.inputs.get(port)
            if consumer is None:
                violations.append(
                    Violation(
                        s.name,
                        f"steps[{i}].inputs.{port}",
                        f"{mv.ref} has no input port {port!r} (has {sorted(mv.manifest.contract.inputs)})",
                    )
                )
                continue
            produced = _source_port(system, modules, src.step, src.port)
            if isinstance(produced, str):
                violations.append(Violation(s.name, f"steps[{i}].inputs.{port}", produced))
                continue
            producer_ref, out = produced
            if src.adapter is not None:
                ad = get(src.adapter, s.name, f"steps[{i}].inputs.{port}.adapter", Role.ADAPTER)
                if ad is None:
                    continue
                problems = _through_adapter(out, ad, consumer)
            else:
                problems = compat.check_ports(out, consumer)
            edges.append(Edge(s.name, port, src.from_, producer_ref, mv.ref, src.adapter, tuple(problems)))
            for p in problems:
                violations.append(
                    Violation(
                        s.name,
                        f"steps[{i}].inputs.{port}",
                        f"{producer_ref} -> {mv.ref}: {p.field}: {p.reason}",
                        "compat",
                    )
                )
        if s.fallback is not None:
            violations.extend(_fallback(s, i, mv, s.fallback, get=get, system=system, modules=modules))
    violations.extend(_requirements(system, resolved))
    return Report(resolved=resolved, edges=tuple(edges), violations=tuple(violations))


def _requirements(system: System, resolved: dict[str, ModuleVersion]) -> list[Violation]:
    """Requirement conflicts between the modules of the system, each naming both modules."""
    needs = [(mv.ref, r) for mv in resolved.values() for r in mv.manifest.runtime.requirements]
    step_of = {resolved[s.module].ref: s.name for s in system.spec.steps if s.module in resolved}
    return [
        Violation(step_of.get(c.first[0], ""), "runtime.requirements", str(c), "requirements")
        for c in requirements.conflicts(needs)
    ]


def _through_adapter(out: Port, ad: ModuleVersion, consumer: Port) -> list[compat.Problem]:
    """Problems on producer -> adapter -> consumer (both hops)."""
    a_in = compat.pick_port(ad.manifest.contract.inputs, None, side="input")
    a_out = compat.pick_port(ad.manifest.contract.outputs, None, side="output")
    if isinstance(a_in, compat.Problem) or isinstance(a_out, compat.Problem):
        return [p for p in (a_in, a_out) if isinstance(p, compat.Problem)]
    first = [compat.Problem(f"adapter input {p.field}", p.reason) for p in compat.check_ports(out, a_in[1])]
    return first + compat.check_ports(a_out[1], consumer)


def _source_port(
    system: System, modules: dict[str, ModuleVersion], step: str, port: str | None
) -> tuple[str, Port] | str:
    if step == "input":
        assert port is not None
        return f"input.{port}", system.spec.input[port]
    mv = modules.get(step)
    if mv is None:
        return f"source step {step!r} did not resolve"
    picked = compat.pick_port(mv.manifest.contract.outputs, port, side="output")
    if isinstance(picked, compat.Problem):
        return f"{mv.ref}: {picked.reason}"
    return mv.ref, picked[1]


def _policies(mv: ModuleVersion, system: System, step: str, field: str, today: dt.date) -> list[Violation]:
    out = []
    if mv.deprecated(today):
        out.append(
            Violation(step, field, f"{mv.ref} is deprecated since {mv.deprecation} (today is {today})", "policy")
        )
    body = system.spec
    if (
        body.stability is Stability.STABLE
        and mv.manifest.metadata.stability is Stability.EXPERIMENTAL
        and mv.name not in body.allow_experimental
    ):
        out.append(
            Violation(
                step,
                field,
                f"{mv.ref} is experimental in a stable system (add {mv.name!r} to spec.allowExperimental to allow it)",
                "policy",
            )
        )
    return out


def _fallback(
    s: Step,
    i: int,
    primary: ModuleVersion,
    fb: Fallback,
    *,
    get: Callable[..., ModuleVersion | None],
    system: System,
    modules: dict[str, ModuleVersion],
) -> list[Violation]:
    field = f"steps[{i}].fallback"
    out: list[Violation] = []
    outputs = primary.manifest.contract.outputs
    if fb.default is not None:
        missing = sorted(set(outputs) - set(fb.default))
        extra = sorted(set(fb.default) - set(outputs))
        if missing or extra:
            out.append(
                Violation(
                    s.name,
                    f"{field}.default",
                    f"must give exactly the outputs of {primary.ref} {sorted(outputs)}"
                    + (f"; missing {missing}" if missing else "")
                    + (f"; extra {extra}" if extra else ""),
                )
            )
        return out
    assert fb.module is not None
    mv = get(fb.module, s.name, f"{field}.module")
    if mv is None:
        return out
    for port, src in s.wired().items():
        consumer = mv.manifest.contract.inputs.get(port)
        produced = _source_port(system, modules, src.step, src.port)
        if consumer is None or isinstance(produced, str):
            out.append(Violation(s.name, f"{field}.module", f"{mv.ref} cannot take input {port!r} like {primary.ref}"))
            continue
        if src.adapter is None:
            for p in compat.check_ports(produced[1], consumer):
                out.append(Violation(s.name, f"{field}.module", f"{produced[0]} -> {mv.ref}: {p}", "compat"))
    for port, expected in outputs.items():
        got = mv.manifest.contract.outputs.get(port)
        if got is None:
            out.append(Violation(s.name, f"{field}.module", f"{mv.ref} lacks output {port!r} of {primary.ref}"))
            continue
        for p in compat.check_ports(got, expected):
            out.append(
                Violation(s.name, f"{field}.module", f"{mv.ref} cannot stand in for {primary.ref}: {p}", "compat")
            )
    return out
