"""The error tree, organised by what the caller does about it.

    ModshipError
    ├── SpecError        bad input: never retried; names the field (exit 2)
    ├── NotFound         a module, version, alias, system or rollout that does not exist (exit 3)
    ├── IntegrityError   a digest mismatch: the stored bytes are not what was registered (exit 4)
    ├── Conflict         someone else holds the lock / the object changed underneath (exit 5)
    ├── Unavailable      a backend is down or slow; retried with backoff, then reported (exit 6)
    ├── Denied           no valid credential, or a request the API never accepts (exit 8)
    └── Forbidden        the governance policy refuses this person this request now (exit 9)

A failed canary is a *verdict*, not an exception. Adapters translate library errors into these at
one choke point (``raise Unavailable(...) from exc``) so callers never see a library's exceptions.
"""

from __future__ import annotations


class ModshipError(Exception):
    """Base of every error modship reports to a user."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class SpecError(ModshipError):
    """Bad input. ``field`` is a dotted path into the document (``steps[2].module``)."""

    exit_code = 2

    def __init__(self, message: str, *, field: str | None = None, source: str | None = None) -> None:
        self.field = field
        self.source = source
        where = ": ".join(p for p in (source, field) if p)
        super().__init__(f"{where}: {message}" if where else message)
        self.reason = message


class SpecErrors(SpecError):
    """Several independent problems in one document, all reported at once."""

    def __init__(self, errors: list[SpecError]) -> None:
        self.errors = errors
        lines = [str(e) for e in errors]
        super().__init__(f"{len(errors)} problem(s)\n  " + "\n  ".join(lines))


class NotFound(ModshipError):
    exit_code = 3


class IntegrityError(ModshipError):
    """Stored bytes differ from their registered digest. ``path`` names the file."""

    exit_code = 4

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class Conflict(ModshipError):
    exit_code = 5


class Unavailable(ModshipError):
    """A backend could not be reached. ``delay`` is a hint for when to try again (seconds)."""

    exit_code = 6

    def __init__(self, message: str, *, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class Denied(ModshipError):
    """Refused for who (or where from) the caller is: no or an unknown token, a foreign origin."""

    exit_code = 8


class Forbidden(ModshipError):
    """The policy refuses the request: not a promoter or approver, self-approval, outside a change
    window, a reason missing. ``kind`` names the rule (``plan.governance.Refused``)."""

    exit_code = 9

    def __init__(self, message: str, *, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind
