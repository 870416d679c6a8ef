"""Traffic splitting through an Istio VirtualService the user owns: every http route to
``S-stable``/``S-canary`` gets both destinations weighted (integer percentages) and the mirror; a
header route is an extra first route.
"""

from __future__ import annotations

from typing import Any

from controller.adapters.kube.api import VIRTUALSERVICES, Json
from controller.adapters.kube.gateway import HEADER_RULE
from controller.adapters.kube.names import service_names
from controller.adapters.kube.traffic import Context, Notes, Split, mirroring, weights
from controller.errors import Unavailable


class IstioRouter:
    """The TrafficRouter for ``spec.trafficRouting.istio``."""

    def __init__(self, ctx: Context, virtual_service: str) -> None:
        self.ctx, self.name = ctx, virtual_service
        self.label = f"VirtualService {virtual_service}"

    def notes(self, split: Split) -> Notes:
        return mirroring(split) if split.mirror else {}

    def route(self, split: Split) -> None:
        ctx = self.ctx
        obj = ctx.user_object(VIRTUALSERVICES, self.name, split)
        if obj is None:
            return
        http = istio_http((obj.get("spec") or {}).get("http") or [], system=ctx.system, split=split)
        if http is None:
            raise Unavailable(
                f"VirtualService {ctx.ns}/{self.name} has no http route to host {ctx.system}-stable", delay=10
            )
        ctx.rewrite(VIRTUALSERVICES, self.name, {"http": http}, split)


def _host_is(host: Any, name: str) -> bool:
    return isinstance(host, str) and (host == name or host.startswith(f"{name}."))


def istio_http(http: list[Json], *, system: str, split: Split) -> list[Json] | None:
    """The VirtualService's http routes with modship's split (see ``gateway_rules``)."""
    stable, canary, _ = service_names(system)
    out: list[Json] = []
    weighted = 0
    for route in http:
        if route.get("name") == HEADER_RULE:
            continue
        dests = route.get("route") or []
        if not any(
            _host_is((d.get("destination") or {}).get("host"), stable)
            or _host_is((d.get("destination") or {}).get("host"), canary)
            for d in dests
        ):
            out.append(route)
            continue
        weighted += 1
        base = next(
            (d["destination"] for d in dests if _host_is((d.get("destination") or {}).get("host"), stable)),
            {"host": stable},
        )
        port = {"port": base["port"]} if "port" in base else {}
        new = {k: v for k, v in route.items() if k not in ("mirror", "mirrorPercentage")}
        if split.canary is None:
            new["route"] = [{"destination": {"host": stable, **port}, "weight": 100}]
        else:
            ws, wc = weights(split.weight)
            if ws + wc != 100:  # Istio weights are integer percentages
                wc = round(split.weight)
                ws = 100 - wc
            new["route"] = [
                {"destination": {"host": stable, **port}, "weight": ws},
                {"destination": {"host": canary, **port}, "weight": wc},
            ]
            if split.mirror > 0:
                new["mirror"] = {"host": canary, **port}
                new["mirrorPercentage"] = {"value": split.mirror}
        out.append(new)
    if not weighted:
        return None
    if split.canary is not None and split.header_route is not None:
        name, value = split.header_route
        match = {"exact": value} if value else {"regex": ".*"}
        out.insert(
            0,
            {"name": HEADER_RULE, "match": [{"headers": {name: match}}], "route": [{"destination": {"host": canary}}]},
        )
    return out
