"""A new system from a running one and a list of module versions: what ``promote`` composes.

Module versions whose name is already used are swapped in place (steps, fallbacks, adapters).
Adapter modules that are not yet used are inserted on the edges they bridge: an edge the swap made
incompatible (say, another embedding space) gets the adapter whose input accepts the producer and
whose output satisfies the consumer. An adapter an edge no longer needs is dropped. Pure: the
caller resolves refs.
"""

from __future__ import annotations

from collections.abc import Callable

from controller.errors import SpecError
from controller.registry import compat
from controller.registry.versions import ModuleVersion
from controller.spec import refs
from controller.spec.modules import Port, Role
from controller.spec.system import Input, Step, System

Resolve = Callable[[str], ModuleVersion]


def rebase(system: System, changes: list[str], resolve: Resolve) -> tuple[System, list[str]]:
    """The changed system and a readable list of what changed."""
    if not changes:
        raise SpecError("name at least one module version (NAME@VERSION)", field="modules")
    wanted = {}
    for text in changes:
        ref = refs.parse(text, field="modules", require_qualifier=True)
        if ref.name in wanted:
            raise SpecError(f"{ref.name} is named twice", field="modules")
        wanted[ref.name] = resolve(str(ref))
    used = {refs.parse(r).name for r in _refs(system)}
    swaps = {n: mv for n, mv in wanted.items() if n in used}
    adapters = {n: mv for n, mv in wanted.items() if n not in used}
    for mv in adapters.values():
        if mv.manifest.role is not Role.ADAPTER:
            raise SpecError(
                f"{mv.ref} is not used by system {system.metadata.name} and is not an adapter", field="modules"
            )
    notes = []
    steps = []
    for s in system.spec.steps:
        new = _swap(s, swaps)
        if new.module != s.module:
            notes.append(f"{s.name}: {s.module} -> {new.module}")
        steps.append(new)
    swapped = system.model_copy(update={"spec": system.spec.model_copy(update={"steps": steps})})
    rewired, wiring_notes = _rewire(swapped, list(adapters.values()), resolve)
    notes += wiring_notes
    inserted = {n.split(" ")[-1].split("@")[0] for n in wiring_notes if "inserted" in n}
    unused = sorted(set(adapters) - inserted)
    if unused:
        raise SpecError(f"adapter {', '.join(unused)} bridges no edge of {system.metadata.name}", field="modules")
    return rewired, notes


def _refs(system: System) -> list[str]:
    out = []
    for s in system.spec.steps:
        out.append(s.module)
        out += [w.adapter for w in s.wired().values() if w.adapter]
        if s.fallback and s.fallback.module:
            out.append(s.fallback.module)
    return out


def _swap(s: Step, swaps: dict[str, ModuleVersion]) -> Step:
    def sw(ref: str) -> str:
        mv = swaps.get(refs.parse(ref).name)
        return mv.ref if mv is not None else ref

    inputs: dict[str, Input | str] = {
        k: w.model_copy(update={"adapter": sw(w.adapter)}) if w.adapter else w for k, w in s.wired().items()
    }
    fb = s.fallback
    # a fallback on another version of the step's own module is the "last good version" pattern:
    # it stays as it is when the step's module moves on
    if fb is not None and fb.module is not None and refs.parse(fb.module).name != refs.parse(s.module).name:
        fb = fb.model_copy(update={"module": sw(fb.module)})
    return s.model_copy(update={"module": sw(s.module), "inputs": inputs, "fallback": fb})


def _rewire(system: System, adapters: list[ModuleVersion], resolve: Resolve) -> tuple[System, list[str]]:
    notes: list[str] = []
    steps = []
    for s in system.spec.steps:
        consumer = resolve(s.module).manifest.contract.inputs
        inputs: dict[str, Input | str] = {}
        for port, wire in s.wired().items():
            w = wire
            produced = _produced(system, w, resolve)
            if produced is None or port not in consumer:
                inputs[port] = w
                continue
            direct_ok = not compat.check_ports(produced, consumer[port])
            if w.adapter is not None and direct_ok and _through(produced, resolve(w.adapter), consumer[port]):
                notes.append(f"{s.name}.{port}: adapter {w.adapter} dropped (no longer needed)")
                w = w.model_copy(update={"adapter": None})
            elif w.adapter is None and not direct_ok:
                fit = next((a for a in adapters if not _through(produced, a, consumer[port])), None)
                if fit is not None:
                    notes.append(f"{s.name}.{port}: inserted adapter {fit.ref}")
                    w = w.model_copy(update={"adapter": fit.ref})
            inputs[port] = w
        steps.append(s.model_copy(update={"inputs": inputs}))
    return system.model_copy(update={"spec": system.spec.model_copy(update={"steps": steps})}), notes


def _produced(system: System, w: Input, resolve: Resolve) -> Port | None:
    if w.step == "input":
        return system.spec.input.get(w.port or "")
    outputs = resolve(system.spec.step(w.step).module).manifest.contract.outputs
    picked = compat.pick_port(outputs, w.port, side="output")
    return None if isinstance(picked, compat.Problem) else picked[1]


def _through(produced: Port, adapter: ModuleVersion, consumer: Port) -> list[compat.Problem]:
    a_in = compat.pick_port(adapter.manifest.contract.inputs, None, side="input")
    a_out = compat.pick_port(adapter.manifest.contract.outputs, None, side="output")
    if isinstance(a_in, compat.Problem) or isinstance(a_out, compat.Problem):
        return [p for p in (a_in, a_out) if isinstance(p, compat.Problem)]
    return compat.check_ports(produced, a_in[1]) + compat.check_ports(a_out[1], consumer)
