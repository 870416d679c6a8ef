"""The input guard of a composed system: every request's inputs decoded and checked against the
system's input ports before any step runs. A refusal is a ``BadRequest`` naming the input (a 400)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from controller.pipeline import values
from controller.pipeline.errors import BadRequest
from controller.spec.system import SystemBody

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class InputGuard:
    def __init__(self, body: SystemBody) -> None:
        self.body = body
        self._deny = [re.compile(p) for p in body.guards.input.deny_patterns]

    def check(self, inputs: Mapping[str, Any], chars: list[int]) -> dict[str, Any]:
        """Every system input decoded and checked against its port: text through the text guard,
        tensors for shape, finite values and range, tables for required columns and types."""
        g = self.body.guards.input
        batch: dict[str, Any] = {}
        size = None
        for name, port in self.body.input.items():
            if name not in inputs:
                raise BadRequest(f"missing input {name!r}")
            raw = inputs[name]
            if isinstance(raw, list) and not raw:
                raise BadRequest(f"input {name!r} is empty")
            try:
                value = values.decode(name, port, raw)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            n = values.size(value)
            if n > g.max_batch:
                raise BadRequest(f"input {name!r} has {n} items; the limit is {g.max_batch}")
            if size is not None and n != size:
                raise BadRequest("inputs have different batch sizes")
            size = n
            if port.dtype == "string":
                value = [self._text(name, v, chars) for v in value]
            batch[name] = value
        unknown = sorted(set(inputs) - set(self.body.input))
        if unknown:
            raise BadRequest(f"unknown input {unknown[0]!r} (expected {sorted(self.body.input)})")
        return batch

    def _text(self, name: str, value: Any, chars: list[int]) -> str:
        g = self.body.guards.input
        v: str = value
        if g.normalize_unicode:
            v = unicodedata.normalize("NFC", v)
        if g.strip_control:
            v = _CONTROL.sub("", v)
        chars.append(len(v))
        if len(v.strip()) < g.min_chars:
            raise BadRequest(f"input {name!r} is shorter than {g.min_chars} character(s)")
        if len(v) > g.max_chars:
            raise BadRequest(f"input {name!r} has {len(v)} characters; the limit is {g.max_chars}")
        for p in self._deny:
            if p.search(v):
                raise BadRequest(f"input {name!r} matches a denied pattern")
        return v
