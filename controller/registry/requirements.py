"""Python requirements of modules: read them, and find the ones two modules of a system cannot share.

Two requirements on the same package conflict when no version can satisfy both: two different
exact pins, or one module's pin outside the other's range. Ranges alone are not judged (that would
need the package index); the check is conservative and names both modules and the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name


@dataclass(frozen=True, slots=True)
class Conflict:
    package: str
    first: tuple[str, str]  # (module ref, requirement as written)
    second: tuple[str, str]

    def __str__(self) -> str:
        (a, ra), (b, rb) = self.first, self.second
        return f"{a} needs {ra!r} and {b} needs {rb!r}: no version of {self.package} satisfies both"


def parse_file(text: str) -> tuple[str, ...]:
    """Requirements from a requirements.txt (comments, options and blank lines skipped).
    Raises ValueError naming a line that is not a requirement."""
    out = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        try:
            Requirement(line)
        except InvalidRequirement as exc:
            raise ValueError(f"line {n}: {line!r} is not a requirement ({exc})") from None
        out.append(line)
    return tuple(out)


def _pins(req: Requirement) -> set[str]:
    return {s.version for s in req.specifier if s.operator in ("==", "===") and "*" not in s.version}


def conflicts(needs: list[tuple[str, str]]) -> list[Conflict]:
    """Every pair of ``(module ref, requirement)`` that cannot be satisfied together."""
    by_pkg: dict[str, list[tuple[str, str, Requirement]]] = {}
    for ref, text in needs:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        by_pkg.setdefault(canonicalize_name(req.name), []).append((ref, text, req))
    found = []
    for pkg, reqs in sorted(by_pkg.items()):
        for (a, ta, ra), (b, tb, rb) in combinations(reqs, 2):
            if a == b:
                continue
            pins_a, pins_b = _pins(ra), _pins(rb)
            clash = (pins_a and not any(rb.specifier.contains(v, prereleases=True) for v in pins_a)) or (
                pins_b and not any(ra.specifier.contains(v, prereleases=True) for v in pins_b)
            )
            if clash:
                found.append(Conflict(pkg, (a, ta), (b, tb)))
    return found


def union(needs: list[tuple[str, str]]) -> list[str]:
    """The requirements of a system's modules, each written once, sorted by package."""
    seen: dict[str, None] = {}
    for _, text in needs:
        seen.setdefault(str(Requirement(text)), None)
    return sorted(seen, key=lambda t: canonicalize_name(Requirement(t).name))
