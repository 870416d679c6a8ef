"""Traffic splitting through NGINX Ingress: a canary twin of the user's Ingress (same hosts and
paths, backends ``S-canary``) with the NGINX canary annotations. NGINX cannot mirror.
"""

from __future__ import annotations

from controller.adapters.kube.api import INGRESSES, Json
from controller.adapters.kube.names import Owner, labels, meta, service_names
from controller.adapters.kube.traffic import Context, Notes, Split
from controller.errors import Unavailable

CANARY_ANNOTATION = "nginx.ingress.kubernetes.io/canary"


class NginxRouter:
    """The TrafficRouter for ``spec.trafficRouting.nginx``."""

    def __init__(self, ctx: Context, ingress: str) -> None:
        self.ctx, self.ingress = ctx, ingress
        self.label = f"Ingress {ingress}-canary"

    def notes(self, split: Split) -> Notes:
        if not split.mirror:
            return {}
        return {"Mirroring": (False, "MirrorUnsupported", "NGINX Ingress cannot mirror: setMirror ignored")}

    def route(self, split: Split) -> None:
        ctx = self.ctx
        obj = ctx.user_object(INGRESSES, self.ingress, split)
        if obj is None:
            return
        ctx.apply(INGRESSES, nginx_canary(obj, system=ctx.system, split=split, owner=ctx.owner))
        ctx.shared.applied.remember(ctx.key(INGRESSES, self.ingress), ctx.shared.applied.digest(split))


def nginx_canary(stable: Json, *, system: str, split: Split, owner: Owner) -> Json:
    """The canary twin of the stable Ingress: same hosts and paths, backends ``S-canary``, and the
    NGINX canary annotations (weight 0 and no header while nothing is in flight)."""
    s_svc, c_svc, _ = service_names(system)
    spec = stable.get("spec") or {}
    rules = []
    for rule in spec.get("rules") or []:
        paths = []
        for p in (rule.get("http") or {}).get("paths") or []:
            svc = (p.get("backend") or {}).get("service") or {}
            if svc.get("name") == s_svc:
                paths.append({**p, "backend": {"service": {**svc, "name": c_svc}}})
        if paths:
            rules.append({**({"host": rule["host"]} if rule.get("host") else {}), "http": {"paths": paths}})
    if not rules:
        raise Unavailable(
            f"Ingress {owner.namespace}/{stable['metadata']['name']} has no path to Service {s_svc}", delay=10
        )
    ann = {CANARY_ANNOTATION: "true", f"{CANARY_ANNOTATION}-weight": "0"}
    if split.canary is not None:
        ann[f"{CANARY_ANNOTATION}-weight"] = str(round(split.weight))
        if split.header_route is not None:
            name, value = split.header_route
            ann[f"{CANARY_ANNOTATION}-by-header"] = name
            if value:
                ann[f"{CANARY_ANNOTATION}-by-header-value"] = value
            else:
                ann[f"{CANARY_ANNOTATION}-by-header-pattern"] = ".*"
    out_spec: Json = {"rules": rules}
    if spec.get("ingressClassName"):
        out_spec["ingressClassName"] = spec["ingressClassName"]
    name = f"{stable['metadata']['name']}-canary"
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": meta(name, owner, labels(system, owner.name), ann),
        "spec": out_spec,
    }
