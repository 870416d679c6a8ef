"""Registry aliases that follow reality: ``@canary`` on the module versions a canary brings,
``@stable`` on what serves. Locally the lock files name every module of both revisions; on
Kubernetes the Rollout's ``spec.modules`` names the versions the canary changes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from controller import ports
from controller.plan.actions import SetAliases
from controller.spec import refs


def for_changed_modules(
    registry: ports.Registry, target: str | None, modules: Sequence[str]
) -> Callable[[SetAliases], None] | None:
    """Aliases for the versions in ``modules`` (NAME@VERSION) of revision ``target``; None when
    there is nothing to move (no module versions named)."""
    pinned = [r for r in (refs.parse(m) for m in modules if "@" in m) if r.version is not None]
    if not pinned or target is None:
        return None

    def move(a: SetAliases) -> None:
        for r in pinned:
            assert r.version is not None
            if a.canary == target:
                registry.set_alias(r.name, "canary", r.version)
                continue
            registry.delete_alias(r.name, "canary")
            if a.stable == target:
                registry.set_alias(r.name, "stable", r.version)

    return move
