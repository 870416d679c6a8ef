"""Traffic splitting through a Gateway API HTTPRoute the user owns: every rule sending to
``S-stable``/``S-canary`` gets both backends weighted (and a RequestMirror filter); a header route is
an extra first rule. Rules that send elsewhere are left alone.
"""

from __future__ import annotations

from controller.adapters.kube.api import CRDS, HTTPROUTES, Json, Kube
from controller.adapters.kube.names import service_names
from controller.adapters.kube.traffic import Context, Notes, Split, mirroring, weights
from controller.errors import Unavailable

HEADER_RULE = "modship-canary-header"


class GatewayRouter:
    """The TrafficRouter for ``spec.trafficRouting.gatewayAPI``."""

    def __init__(self, ctx: Context, http_route: str) -> None:
        self.ctx, self.name = ctx, http_route
        self.label = f"HTTPRoute {http_route}"

    def _mirror_percent(self) -> bool:
        shared = self.ctx.shared
        if shared.mirror_percent is None:
            shared.mirror_percent = mirror_percent_supported(shared.kube)
        return shared.mirror_percent

    def notes(self, split: Split) -> Notes:
        if not split.mirror:
            return {}
        if not self._mirror_percent():
            why = f"the installed HTTPRoute CRD has no requestMirror.percent: {split.mirror:g} % mirroring not applied"
            return {"Mirroring": (False, "MirrorPercentUnsupported", why)}
        return mirroring(split)

    def route(self, split: Split) -> None:
        ctx = self.ctx
        obj = ctx.user_object(HTTPROUTES, self.name, split)
        if obj is None:
            return
        rules = gateway_rules(
            (obj.get("spec") or {}).get("rules") or [],
            system=ctx.system,
            split=split,
            port=ctx.port,
            mirror_percent=self._mirror_percent(),
        )
        if rules is None:
            why = f"HTTPRoute {ctx.ns}/{self.name} has no rule with a backendRef to Service {ctx.system}-stable"
            raise Unavailable(why, delay=10)
        ctx.rewrite(HTTPROUTES, self.name, {"rules": rules}, split)


def mirror_percent_supported(kube: Kube) -> bool:
    """Whether the installed HTTPRoute CRD has ``requestMirror.percent`` (Gateway API >= 1.2).
    Without permission to read CRDs, assume it does: strict field validation then rejects it loudly."""
    try:
        crd = kube.get(CRDS, None, "httproutes.gateway.networking.k8s.io")
    except Unavailable:
        return True
    for v in ((crd or {}).get("spec") or {}).get("versions") or []:
        if not v.get("storage"):
            continue
        node = (v.get("schema") or {}).get("openAPIV3Schema") or {}
        for key in ("spec", "rules", "*", "filters", "*", "requestMirror"):
            node = (
                node.get("items" if key == "*" else "properties", {}).get(key, {})
                if key != "*"
                else node.get("items", {})
            )
        return "percent" in (node.get("properties") or {})
    return False


def gateway_rules(
    rules: list[Json], *, system: str, split: Split, port: int, mirror_percent: bool
) -> list[Json] | None:
    """The HTTPRoute's rules with modship's split: every rule sending to ``S-stable``/``S-canary``
    gets both backends weighted (and the mirror filter); a header route is an extra first rule.
    None when no rule sends to the system's Services."""
    stable, canary, _ = service_names(system)
    ours = {stable, canary}
    out: list[Json] = []
    weighted: list[Json] = []
    for rule in rules:
        if rule.get("name") == HEADER_RULE:
            continue
        refs = rule.get("backendRefs") or []
        if not any(ref.get("name") in ours for ref in refs):
            out.append(rule)
            continue
        p = next((ref.get("port") for ref in refs if ref.get("name") in ours and ref.get("port")), port)
        new = dict(rule)
        if split.canary is None:
            new["backendRefs"] = [{"name": stable, "port": p, "weight": 100}]
        else:
            ws, wc = weights(split.weight)
            new["backendRefs"] = [{"name": stable, "port": p, "weight": ws}, {"name": canary, "port": p, "weight": wc}]
        filters = [
            f
            for f in rule.get("filters") or []
            if not (
                f.get("type") == "RequestMirror"
                and (f.get("requestMirror") or {}).get("backendRef", {}).get("name") == canary
            )
        ]
        if split.canary is not None and split.mirror > 0 and mirror_percent:
            mirror: Json = {"backendRef": {"name": canary, "port": p}}
            if float(split.mirror).is_integer():
                mirror["percent"] = int(split.mirror)
            else:
                mirror["fraction"] = {"numerator": round(split.mirror * 100), "denominator": 10000}
            filters.append({"type": "RequestMirror", "requestMirror": mirror})
        if filters:
            new["filters"] = filters
        else:
            new.pop("filters", None)
        out.append(new)
        weighted.append(new)
    if not weighted:
        return None
    if split.canary is not None and split.header_route is not None:
        name, value = split.header_route
        header = (
            {"name": name, "type": "Exact", "value": value}
            if value
            else {"name": name, "type": "RegularExpression", "value": ".*"}
        )
        p = weighted[0]["backendRefs"][0]["port"]
        matches = [
            {**{k: v for k, v in m.items() if k == "path"}, "headers": [header]}
            for m in weighted[0].get("matches") or [{}]
        ]
        out.insert(0, {"name": HEADER_RULE, "matches": matches, "backendRefs": [{"name": canary, "port": p}]})
    return out
