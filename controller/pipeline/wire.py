"""The framing between the service and an isolated worker: safe to read from untrusted code.

A message is ``<u32 header length><u32 body length>``, a JSON header, then a body of raw array
buffers. Port values travel as ``{"json": [...]}`` (strings, lists, numbers) or as
``{"dtype": "<f4", "shape": [...], "offset": n}`` pointing into the body, and tables
(``values.Table``) as ``{"table": {column: value}, "rows": n}``. Nothing is ever
unpickled or evaluated: decoding only accepts plain numeric dtypes, checks every shape and offset
against the body, and caps sizes, so a hostile worker can at worst send a wrong answer.
"""

from __future__ import annotations

import json
import math
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from controller.pipeline import values

PREFIX = struct.Struct("<II")
MAX_HEADER = 64 << 20
MAX_BODY = 256 << 20
MAX_DIMS = 8
ALIGN = 16
# byte-order-explicit dtype strings a worker may send; object, string and void dtypes never travel
DTYPES = frozenset(
    np.dtype(t).str for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1", "c8", "c16")
)


class WireError(ValueError):
    """A message that breaks the framing: the channel is out of sync and must be dropped."""


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} cannot travel to or from an isolated worker")


def encode(header: Mapping[str, Any], ports: Mapping[str, Any] | None = None) -> list[bytes | memoryview]:
    """The buffers of one message (send them in order); numeric arrays travel as raw bytes."""
    buffers: list[memoryview] = []
    specs = {name: _spec(value, buffers) for name, value in (ports or {}).items()}
    size = sum(len(b) for b in buffers)
    head = json.dumps({**header, "ports": specs}, default=_plain, allow_nan=True).encode()
    if len(head) > MAX_HEADER or size > MAX_BODY:
        raise WireError(f"message too large ({len(head)} header bytes, {size} body bytes)")
    return [PREFIX.pack(len(head), size) + head, *buffers]


def _spec(value: Any, buffers: list[memoryview]) -> dict[str, Any]:
    """How one value travels; its raw bytes (if any) are appended to ``buffers``."""
    if isinstance(value, values.Table):
        return {"table": {c: _spec(v, buffers) for c, v in value.columns.items()}, "rows": value.rows}
    arr = value if isinstance(value, np.ndarray) else None
    if arr is None or arr.ndim == 0 or arr.dtype.newbyteorder("<").str not in DTYPES:
        return {"json": value}
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    size = sum(len(b) for b in buffers)
    if size % ALIGN:
        buffers.append(memoryview(bytes(-size % ALIGN)))
        size += len(buffers[-1])
    buffers.append(arr.data.cast("B"))
    return {"dtype": arr.dtype.str, "shape": list(arr.shape), "offset": size}


def send(sock: socket.socket, parts: list[bytes | memoryview]) -> None:
    if len(parts) == 1 or sum(len(p) for p in parts) < 65536:
        sock.sendall(b"".join(parts))
    else:
        for p in parts:
            sock.sendall(p)


def recv_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytearray:
    """Exactly ``n`` bytes; EOFError when the peer closed the channel first, TimeoutError when
    ``deadline`` (``time.monotonic()``) passes: a trickling peer cannot stretch it."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the deadline passed")
            sock.settimeout(left)
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("the channel was closed")
        got += k
    return buf


def receive(sock: socket.socket, deadline: float | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """One message: its header (without ``ports``) and its decoded port values."""
    head_len, body_len = PREFIX.unpack(recv_exact(sock, PREFIX.size, deadline))
    if head_len > MAX_HEADER or body_len > MAX_BODY:
        raise WireError(f"message too large ({head_len} header bytes, {body_len} body bytes)")
    try:
        header = json.loads(recv_exact(sock, head_len, deadline))
    except ValueError as exc:
        raise WireError(f"the header is not JSON: {exc}") from None
    body = recv_exact(sock, body_len, deadline) if body_len else bytearray()
    if not isinstance(header, dict):
        raise WireError("the header is not a JSON object")
    specs = header.pop("ports", {})
    if not isinstance(specs, dict):
        raise WireError("'ports' is not an object")
    return header, {str(k): _port(str(k), v, body) for k, v in specs.items()}


def _port(name: str, spec: Any, body: bytearray, *, nested: bool = False) -> Any:
    if not isinstance(spec, dict):
        raise WireError(f"port {name!r}: not an object")
    if "table" in spec and not nested:
        cols, rows = spec["table"], spec.get("rows")
        if not isinstance(cols, dict) or type(rows) is not int or rows < 0:
            raise WireError(f"port {name!r}: a table needs columns and a row count")
        table = {str(c): _port(f"{name}.{c}", v, body, nested=True) for c, v in cols.items()}
        if any(len(v) != rows for v in table.values()):
            raise WireError(f"port {name!r}: every column must have {rows} rows")
        return values.Table(table, rows)
    if "json" in spec:
        if not isinstance(spec["json"], list):
            raise WireError(f"port {name!r}: a value must be a list (batch first)")
        return spec["json"]
    dtype, shape, offset = spec.get("dtype"), spec.get("shape"), spec.get("offset")
    if dtype not in DTYPES:
        raise WireError(f"port {name!r}: dtype {dtype!r} is not allowed")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise WireError(f"port {name!r}: bad shape {shape!r}")
    if not all(type(d) is int and d >= 0 for d in shape) or type(offset) is not int or offset < 0:
        raise WireError(f"port {name!r}: bad shape {shape!r} or offset {offset!r}")
    dt = np.dtype(dtype)
    count = math.prod(shape)
    if offset + count * dt.itemsize > len(body):
        raise WireError(f"port {name!r}: {count} items at offset {offset} overrun the body ({len(body)} bytes)")
    return np.frombuffer(body, dtype=dt, count=count, offset=offset).reshape(shape)
