"""Whether module A's output satisfies module B's input: types and shapes, and meaning.

Pure functions of contracts only: metadata (owners, license, calibration...) never changes the
answer. Every reason is returned, not just the first, so a user fixes an edge in one go.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.spec.modules import Contract, Port

# Safe widenings a consumer accepts without loss.
_WIDENS: dict[str, frozenset[str]] = {
    "float32": frozenset({"float32"}),
    "float64": frozenset({"float32", "float64", "int32", "uint8"}),
    "int64": frozenset({"int32", "int64", "uint8"}),
    "int32": frozenset({"int32", "uint8"}),
    "string": frozenset({"string"}),
    "bool": frozenset({"bool"}),
    "uint8": frozenset({"uint8"}),
    "table": frozenset({"table"}),
}


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason an edge is incompatible. ``field`` names the contract field at fault."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


def check_ports(out: Port, inp: Port) -> list[Problem]:
    """Problems with feeding output port ``out`` into input port ``inp`` (empty: compatible)."""
    return [
        *_types(out, inp),
        *_meaning_space(out, inp),
        *_meaning_tokenizer(out, inp),
        *_meaning_labels(out, inp),
        *_meaning_range(out, inp),
    ]


def _types(out: Port, inp: Port) -> list[Problem]:
    problems = []
    if out.dtype not in _WIDENS[inp.dtype]:
        problems.append(Problem("dtype", f"produces {out.dtype}, consumer accepts {inp.dtype}"))
    elif out.columns is not None and inp.columns is not None:
        problems.extend(_columns(out, inp))
    if out.shape and inp.shape:
        if len(out.shape) != len(inp.shape):
            problems.append(Problem("shape", f"rank {len(out.shape)} {list(out.shape)} vs {list(inp.shape)}"))
        else:
            for i, (a, b) in enumerate(zip(out.shape, inp.shape, strict=True)):
                if a != b and -1 not in (a, b):
                    problems.append(Problem("shape", f"dimension {i} is {a}, consumer expects {b}"))
    return problems


def _columns(out: Port, inp: Port) -> list[Problem]:
    """A table edge: every column the consumer requires is produced, with a type it accepts."""
    assert out.columns is not None and inp.columns is not None
    problems = []
    for name, want in inp.columns.items():
        got = out.columns.get(name)
        if got is None:
            if want.required:
                problems.append(Problem(f"columns.{name}", "required column is not produced"))
            continue
        if got.dtype not in _WIDENS[want.dtype]:
            problems.append(Problem(f"columns.{name}", f"produces {got.dtype}, consumer accepts {want.dtype}"))
        if want.range is not None and (
            got.range is None or got.range[0] < want.range[0] or got.range[1] > want.range[1]
        ):
            problems.append(
                Problem(
                    f"columns.{name}",
                    f"values in {list(got.range) if got.range else 'any range'} exceed the accepted {list(want.range)}",
                )
            )
    return problems


def _meaning_space(out: Port, inp: Port) -> list[Problem]:
    if inp.space is None or out.space == inp.space:
        return []
    if out.space is None:
        return [Problem("space", f"consumer needs embedding space {inp.space!r}; producer declares none")]
    return [
        Problem(
            "space",
            f"embedding space {out.space!r} is not {inp.space!r} (same shape, different meaning: insert an adapter)",
        )
    ]


def _meaning_tokenizer(out: Port, inp: Port) -> list[Problem]:
    if inp.tokenizer is None or out.tokenizer == inp.tokenizer:
        return []
    if out.tokenizer is None:
        if inp.dtype == "string":  # raw text: the consumer tokenizes it itself
            return []
        return [Problem("tokenizer", f"consumer needs token ids from {inp.tokenizer}; producer declares none")]
    return [Problem("tokenizer", f"tokenizer {out.tokenizer} is not {inp.tokenizer}")]


def _meaning_labels(out: Port, inp: Port) -> list[Problem]:
    if inp.labels is None or out.labels == inp.labels:
        return []
    if out.labels is None:
        return [Problem("labels", f"consumer needs label set {list(inp.labels)}; producer declares none")]
    if set(out.labels) == set(inp.labels):
        return [Problem("labels", f"label order {list(out.labels)} differs from {list(inp.labels)}")]
    missing = sorted(set(inp.labels) - set(out.labels))
    extra = sorted(set(out.labels) - set(inp.labels))
    detail = "; ".join(p for p in (f"missing {missing}" if missing else "", f"extra {extra}" if extra else "") if p)
    return [Problem("labels", f"label set differs: {detail}")]


def _meaning_range(out: Port, inp: Port) -> list[Problem]:
    if inp.range is None:
        return []
    if out.range is None:
        return [Problem("range", f"consumer needs values in {list(inp.range)}; producer declares no range")]
    if out.range[0] < inp.range[0] or out.range[1] > inp.range[1]:
        return [Problem("range", f"values in {list(out.range)} exceed the accepted {list(inp.range)}")]
    return []


def pick_port(ports: dict[str, Port], name: str | None, *, side: str) -> tuple[str, Port] | Problem:
    """The port named ``name``, or the only port when ``name`` is None."""
    if name is not None:
        if name not in ports:
            return Problem("port", f"no {side} port {name!r} (has {sorted(ports)})")
        return name, ports[name]
    if len(ports) != 1:
        return Problem("port", f"several {side} ports {sorted(ports)}: name one")
    return next(iter(ports.items()))


def check_contracts(
    producer: Contract, consumer: Contract, *, out_port: str | None = None, in_port: str | None = None
) -> list[Problem]:
    """Problems with feeding ``producer``'s output into ``consumer``'s input."""
    out = pick_port(producer.outputs, out_port, side="output")
    inp = pick_port(consumer.inputs, in_port, side="input")
    if isinstance(out, Problem) or isinstance(inp, Problem):
        return [p for p in (out, inp) if isinstance(p, Problem)]
    return check_ports(out[1], inp[1])


@dataclass(frozen=True, slots=True)
class Cell:
    producer: str
    consumer: str
    problems: tuple[Problem, ...]

    @property
    def compatible(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, object]:
        return {
            "producer": self.producer,
            "consumer": self.consumer,
            "compatible": self.compatible,
            "problems": [{"field": p.field, "reason": p.reason} for p in self.problems],
        }


def matrix(
    producers: list[tuple[str, Contract]],
    consumers: list[tuple[str, Contract]],
    *,
    out_port: str | None = None,
    in_port: str | None = None,
) -> list[Cell]:
    """Every producer version against every consumer version, row by row."""
    return [
        Cell(p_ref, c_ref, tuple(check_contracts(p, c, out_port=out_port, in_port=in_port)))
        for p_ref, p in producers
        for c_ref, c in consumers
    ]
