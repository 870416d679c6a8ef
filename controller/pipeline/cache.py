"""A bounded, thread-safe LRU cache per step, keyed by the module digest and a hash of the input."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from controller.pipeline.values import Table


def key(digest: str, inputs: Mapping[str, Any]) -> str:
    h = hashlib.blake2b(digest.encode(), digest_size=20)
    for name in sorted(inputs):
        h.update(name.encode())
        _update(h, inputs[name])
    return h.hexdigest()


def _update(h: Any, value: Any) -> None:
    if isinstance(value, np.ndarray):
        h.update(f"{value.dtype}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes() if value.dtype != object else repr(value.tolist()).encode())
    elif isinstance(value, Table):
        for col in sorted(value.columns):
            h.update(b"\0column:" + col.encode())
            _update(h, value.columns[col])
    else:
        for item in value:
            b = item.encode() if isinstance(item, str) else repr(item).encode()
            h.update(len(b).to_bytes(4, "little"))
            h.update(b)


class LRU:
    def __init__(self, max_entries: int, ttl_seconds: float | None = None) -> None:
        self.max_entries, self.ttl = max_entries, ttl_seconds
        self._data: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, k: str) -> dict[str, Any] | None:
        with self._lock:
            item = self._data.get(k)
            if item is None:
                return None
            stamp, value = item
            if self.ttl is not None and time.monotonic() - stamp > self.ttl:
                del self._data[k]
                return None
            self._data.move_to_end(k)
            return value

    def put(self, k: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._data[k] = (time.monotonic(), value)
            self._data.move_to_end(k)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)
