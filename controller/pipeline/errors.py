"""What every kernel shares: the call signature and the errors a module may raise on an input."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from controller.errors import ModshipError

Batch = Mapping[str, Any]


class Kernel(Protocol):
    """A loaded module: maps a batch of named inputs to a batch of named outputs (batch first)."""

    def __call__(self, batch: Batch) -> dict[str, Any]: ...


class KernelError(RuntimeError):
    """A module failed on an input (counts as a step error; may trigger a fallback)."""


class GuardRejected(KernelError):
    """A guard refused an input; a client error when it guards the system's input."""


class BadRequest(ModshipError):
    """The request is invalid: the client must fix it (HTTP 400/422); never a server error."""

    exit_code = 2
