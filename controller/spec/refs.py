"""Module references: ``name``, ``name@3`` (a version) or ``name@stable`` (an alias)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from controller.errors import SpecError

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$")
ALIAS_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,62}$")
RESERVED_ALIASES = frozenset({"latest"})


@dataclass(frozen=True, slots=True)
class ModuleRef:
    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name

    @property
    def pinned(self) -> bool:
        return self.version is not None


def check_name(name: str, *, field: str = "name") -> str:
    if not NAME_RE.match(name):
        raise SpecError(
            f"invalid module name {name!r}: use lowercase letters, digits, '.', '_' or '-' (max 64)",
            field=field,
        )
    return name


def check_alias(alias: str, *, field: str = "alias") -> str:
    if alias in RESERVED_ALIASES or re.fullmatch(r"v\d+", alias) or not ALIAS_RE.match(alias):
        raise SpecError(
            f"invalid alias {alias!r}: lowercase letters, digits, '_' or '-'; 'latest' and 'v<digits>' are reserved",
            field=field,
        )
    return alias


def parse(text: str, *, field: str = "ref", require_qualifier: bool = False) -> ModuleRef:
    """Parse ``name[@version|@alias]``. Raises SpecError naming ``field`` on anything else."""
    text = text.strip()
    name, sep, qualifier = text.partition("@")
    check_name(name, field=field)
    if not sep:
        if require_qualifier:
            raise SpecError(f"{text!r} needs a version or alias: NAME@VERSION or NAME@ALIAS", field=field)
        return ModuleRef(name)
    if not qualifier:
        raise SpecError(f"{text!r}: empty version after '@'", field=field)
    if qualifier.isdigit():
        version = int(qualifier)
        if version < 1:
            raise SpecError(f"{text!r}: versions start at 1", field=field)
        return ModuleRef(name, version=version)
    check_alias(qualifier, field=field)
    return ModuleRef(name, alias=qualifier)
