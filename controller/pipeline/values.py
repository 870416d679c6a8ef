"""Port values in a batch, and their JSON form: text, numeric tensors and tables.

A batch value is, by the port's dtype:

- ``string``: a list of str, one per item;
- numeric (``float32`` ... ``bool``): a numpy array whose first axis is the batch;
- ``table``: a ``Table`` (named columns, one row per item).

``decode`` turns a request's (or a golden file's) JSON value into a batch value and checks it
against the port (shape, finite values, range, required columns): every refusal is a
``ValueError`` whose message names the input and what is wrong. ``encode`` is the way back.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from controller.spec.modules import Column, Port

NUMPY = {"float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64, "uint8": np.uint8}


@dataclass(frozen=True, slots=True)
class Table(Mapping[str, Any]):
    """Rows of named columns: numpy arrays (numbers) or lists (text), all of one length."""

    columns: dict[str, Any]
    rows: int

    def __getitem__(self, name: str) -> Any:
        return self.columns[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns)

    def __len__(self) -> int:
        return len(self.columns)

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame({k: v for k, v in self.columns.items()})

    def records(self) -> list[dict[str, Any]]:
        """One mapping per row; a missing number (NaN) is None, as it came in."""
        cols = {k: _plain(v) for k, v in self.columns.items()}
        return [{k: cols[k][i] for k in cols} for i in range(self.rows)]


def _plain(column: Any) -> list[Any]:
    if isinstance(column, np.ndarray):
        items = column.tolist()
        return (
            [None if isinstance(x, float) and math.isnan(x) else x for x in items]
            if column.dtype.kind == "f"
            else items
        )
    return list(column)


def size(value: Any) -> int:
    """The number of items in a batch value."""
    return value.rows if isinstance(value, Table) else len(value)


def decode(name: str, port: Port, raw: Any) -> Any:
    """A batch value for ``port`` from JSON; a single item is a batch of one. ValueError names the fault."""
    if port.dtype == "string":
        items = raw if isinstance(raw, list) else [raw]
        for v in items:
            if not isinstance(v, str):
                raise ValueError(f"input {name!r} must be text, got {type(v).__name__}")
        return items
    if port.dtype == "table":
        assert port.columns is not None
        return _table(name, port.columns, raw)
    return _tensor(name, port, raw)


def _tensor(name: str, port: Port, raw: Any) -> np.ndarray:
    dtype = np.bool_ if port.dtype == "bool" else NUMPY[port.dtype]
    try:
        arr = np.asarray(raw, dtype=dtype) if port.dtype != "bool" else _bools(raw)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"input {name!r} is not a rectangular array of {port.dtype}") from None
    rank = len(port.shape) or 1
    if arr.ndim == rank - 1:
        arr = arr[None, ...]
    if arr.ndim != rank:
        raise ValueError(f"input {name!r} has {arr.ndim} dimension(s); the contract shape is {list(port.shape)}")
    for i, (got, want) in enumerate(zip(arr.shape[1:], port.shape[1:], strict=False), start=1):
        if want not in (-1, got):
            raise ValueError(f"input {name!r} dimension {i} is {got}; the contract shape is {list(port.shape)}")
    if arr.shape[0] == 0:
        raise ValueError(f"input {name!r} is empty")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"input {name!r} holds NaN or infinity")
    _in_range(f"input {name!r}", port.range, arr)
    return arr


def _bools(raw: Any) -> np.ndarray:
    arr = np.asarray(raw)
    if arr.dtype != np.bool_:
        raise ValueError("not booleans")
    return arr


def _in_range(what: str, rng: tuple[float, float] | None, arr: np.ndarray) -> None:
    if rng is not None and arr.size and (arr.min() < rng[0] or arr.max() > rng[1]):
        raise ValueError(f"{what} has values in [{arr.min():g}, {arr.max():g}], outside the contract range {list(rng)}")


def _table(name: str, columns: Mapping[str, Column], raw: Any) -> Table:
    records = [raw] if isinstance(raw, dict) else raw
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"input {name!r} must be a record (an object of columns) or a list of records")
    if not records:
        raise ValueError(f"input {name!r} is empty")
    for i, r in enumerate(records):
        unknown = sorted(set(r) - set(columns))
        if unknown:
            raise ValueError(f"input {name!r} row {i}: unknown column {unknown[0]!r} (columns: {sorted(columns)})")
        missing = sorted(c for c, spec in columns.items() if spec.required and r.get(c) is None)
        if missing:
            raise ValueError(f"input {name!r} row {i}: missing required column {missing[0]!r}")
    out: dict[str, Any] = {}
    for c, spec in columns.items():
        values = [r.get(c) for r in records]
        if spec.dtype == "string":
            if not all(v is None or isinstance(v, str) for v in values):
                raise ValueError(f"input {name!r} column {c!r} must hold text")
            out[c] = values
            continue
        if any(v is None for v in values):
            if spec.dtype not in ("float32", "float64"):
                raise ValueError(f"input {name!r} column {c!r} has a missing value and dtype {spec.dtype}")
            values = [np.nan if v is None else v for v in values]
        try:
            arr = np.asarray(values, dtype=np.bool_ if spec.dtype == "bool" else NUMPY[spec.dtype])
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"input {name!r} column {c!r} does not hold {spec.dtype} values") from None
        if arr.ndim != 1:
            raise ValueError(f"input {name!r} column {c!r} must hold one value per row")
        present = arr[~np.isnan(arr)] if arr.dtype.kind == "f" else arr
        if arr.dtype.kind == "f" and np.isinf(present).any():
            raise ValueError(f"input {name!r} column {c!r} holds infinity")
        _in_range(f"input {name!r} column {c!r}", spec.range, present)
        out[c] = arr
    return Table(out, len(records))


def encode(value: Any, *, digits: int | None = 6) -> Any:
    """The JSON form of a batch value (floats rounded to ``digits``; None keeps full precision)."""
    if isinstance(value, Table):
        return value.records()
    if isinstance(value, np.ndarray):
        if value.dtype.kind != "f":
            return value.tolist()
        wide = value.astype(np.float64)
        return (wide if digits is None else wide.round(digits)).tolist()
    return list(value)


def concat(values: Sequence[Any]) -> Any:
    """One batch from several (the order kept), for batched calls."""
    first = values[0]
    if isinstance(first, np.ndarray):
        return np.concatenate(values, axis=0)
    if isinstance(first, Table):
        cols = {
            c: np.concatenate([v[c] for v in values])
            if isinstance(first[c], np.ndarray)
            else [x for v in values for x in v[c]]
            for c in first.columns
        }
        return Table(cols, sum(v.rows for v in values))
    return [x for v in values for x in v]


def split(value: Any, sizes: Sequence[int]) -> list[Any]:
    """The inverse of ``concat``: consecutive slices of the given sizes."""
    out, start = [], 0
    for n in sizes:
        if isinstance(value, Table):
            out.append(Table({c: v[start : start + n] for c, v in value.columns.items()}, n))
        else:
            out.append(value[start : start + n])
        start += n
    return out
