"""Whether a declared contract contradicts what the model itself says (an MLflow signature, an ONNX
graph). Pure: the runtimes turn the model's own description into ports, this compares.

A declared port may say *more* than the model (a fixed dimension where the model has a free one,
meaning such as a space or labels); it may not say something *else* (another dtype, rank, size or
column set).
"""

from __future__ import annotations

from controller.errors import SpecError
from controller.spec.modules import Contract, Port


def contradictions(declared: Port, actual: Port) -> list[str]:
    """Reasons ``declared`` contradicts ``actual`` (empty: it agrees)."""
    if declared.dtype != actual.dtype:
        return [f"dtype is {actual.dtype}, the contract says {declared.dtype}"]
    out = []
    if declared.shape and actual.shape:
        if len(declared.shape) != len(actual.shape):
            out.append(f"shape is {list(actual.shape)}, the contract says {list(declared.shape)}")
        else:
            for i, (d, a) in enumerate(zip(declared.shape, actual.shape, strict=True)):
                if d != a and -1 not in (d, a):
                    out.append(f"dimension {i} is {a}, the contract says {d}")
    if declared.columns is not None and actual.columns is not None:
        for name, col in actual.columns.items():
            mine = declared.columns.get(name)
            if mine is None:
                out.append(f"column {name!r} is missing from the contract")
            elif mine.dtype != col.dtype:
                out.append(f"column {name!r} is {col.dtype}, the contract says {mine.dtype}")
        for name in sorted(set(declared.columns) - set(actual.columns)):
            out.append(f"column {name!r} is not in the model's signature")
    return out


def contract_contradictions(declared: Contract, actual: Contract) -> list[tuple[str, str]]:
    """``(field, reason)`` for every port where the declared contract and the model disagree."""
    out: list[tuple[str, str]] = []
    for side in ("inputs", "outputs"):
        mine, theirs = getattr(declared, side), getattr(actual, side)
        for name in sorted(set(theirs) - set(mine)):
            out.append((f"contract.{side}", f"the model has {side[:-1]} {name!r}, the contract does not"))
        for name in sorted(set(mine) - set(theirs)):
            out.append((f"contract.{side}.{name}", f"the model has no {side[:-1]} {name!r} (has {sorted(theirs)})"))
        for name in sorted(set(mine) & set(theirs)):
            out += [(f"contract.{side}.{name}", r) for r in contradictions(mine[name], theirs[name])]
    return out


def overlay(derived: Contract, meaning: dict[str, dict[str, dict[str, object]]]) -> dict[str, object]:
    """The derived contract (wire form) with the user's meaning merged in, port by port.

    ``meaning`` is ``{"inputs"|"outputs": {port: {field: value}}}``; ``*`` names the only port of
    its side. A port it names that the derived contract lacks is kept, so
    ``contract_contradictions`` reports it.
    """
    doc = derived.dump()
    for side, ports in meaning.items():
        target = doc.setdefault(side, {})
        assert isinstance(target, dict)
        for key, fields in (ports or {}).items():
            name = key
            if key == "*":
                if len(target) != 1:
                    raise SpecError(
                        f"the model has {len(target)} {side} ({sorted(target)}): name the port",
                        field=f"contract.{side}",
                    )
                name = next(iter(target))
            base = dict(target.get(name) or {})
            base.update(fields or {})
            target[name] = base
    return doc
