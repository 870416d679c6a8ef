"""The tiers and owners of the module versions a Rollout names (``spec.modules``, NAME@VERSION), read
from the registry for the operator's governance, so a tier's default rule and owner approvals apply
on Kubernetes as they do locally. A registered version's manifest never changes: what was read once is
kept; what could not be read is asked again next time (and counts as unknown meanwhile)."""

from __future__ import annotations

from collections.abc import Sequence

from controller import ports
from controller.errors import ModshipError
from controller.plan.governance import ModuleFacts
from controller.spec import refs
from controller.spec.modules import Stability

NO_REGISTRY = "no registry (set MODSHIP_REGISTRY): the modules' tiers and owners are unknown"


def pinned(modules: Sequence[str]) -> list[refs.ModuleRef]:
    """The module versions named (NAME@VERSION; names, aliases and notes are left out)."""
    out = []
    for m in modules:
        if "@" not in m:
            continue
        try:
            r = refs.parse(m, field="spec.modules")
        except ModshipError:
            continue
        if r.version is not None:
            out.append(r)
    return out


class ModuleFactsReader:
    def __init__(self, registry: ports.Registry) -> None:
        self.registry = registry
        self._known: dict[tuple[str, int], tuple[str, tuple[str, ...]]] = {}

    def read(self, modules: Sequence[str]) -> ModuleFacts | None:
        """What the registry says of the versions ``modules`` names (None: it names none)."""
        refs_ = pinned(modules)
        if not refs_:
            return None
        tiers: set[str] = set()
        owners: dict[str, tuple[str, ...]] = {}
        problems: list[str] = []
        for r in refs_:
            assert r.version is not None
            key = (r.name, r.version)
            if key not in self._known:
                try:
                    meta = self.registry.resolve(r).manifest.metadata
                except (ModshipError, OSError) as exc:  # unreachable, or not there (yet)
                    problems.append(f"{r.name}@{r.version}: {exc}")
                    tiers.add(Stability.STABLE.value)
                    owners[r.name] = ()
                    continue
                self._known[key] = (meta.stability.value, tuple(meta.owners))
            tier, who = self._known[key]
            tiers.add(tier)
            owners[r.name] = who
        return ModuleFacts(tuple(sorted(tiers)), owners, "; ".join(problems) or None)
