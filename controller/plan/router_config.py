"""The router's configuration for a traffic decision, pure: what the local runtime and the cluster's
``modship`` traffic provider send to ``PUT /-/modship/config`` (``controller.spec.routing``), and
whether a router already serves it (the ``generation`` is the writer's business)."""

from __future__ import annotations

from typing import Any

from controller.plan.actions import SetTraffic

_KEYS = ("stable", "canary", "weight", "headerRoute", "mirror", "sticky", "fallback")


def wanted(system: str, t: SetTraffic, *, stable_url: str, canary_url: str | None) -> dict[str, Any]:
    """The configuration for ``t`` without ``generation``; no canary part when ``canary_url`` is None."""
    canary = t.canary is not None and canary_url is not None
    return {
        "system": system,
        "stable": {"revision": t.stable, "url": stable_url},
        "canary": {"revision": t.canary, "url": canary_url} if canary else None,
        "weight": t.weight if canary else 0.0,
        "headerRoute": {"name": t.header_route[0], "value": t.header_route[1]} if t.header_route and canary else None,
        "mirror": {"percent": t.mirror} if t.mirror and canary else None,
        "sticky": {"header": t.sticky_header, "cookie": t.sticky_cookie}
        if (t.sticky_header or t.sticky_cookie)
        else None,
        "fallback": t.fallback,
    }


def same(current: dict[str, Any] | None, want: dict[str, Any]) -> bool:
    """Whether the router's ``current`` configuration routes as ``want`` does."""
    if not current:
        return False
    return all(
        current.get(k) == want.get(k) or (k == "weight" and float(current.get(k) or 0) == float(want[k])) for k in _KEYS
    )


def sends_to_canary(want: dict[str, Any]) -> bool:
    """Whether a configuration gives its canary any request (a weight, a header route, a mirror)."""
    if not want.get("canary"):
        return False
    return float(want.get("weight") or 0) > 0 or bool(want.get("headerRoute")) or bool(want.get("mirror"))
