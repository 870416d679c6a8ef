"""Undo what modship did for a deleted Rollout (behind the ``modship.dev/cleanup`` finalizer)."""

from __future__ import annotations

from controller.adapters.kube.api import CONFIGMAPS, DEPLOYMENTS, HTTPROUTES, INGRESSES, SERVICES, VIRTUALSERVICES, Kube
from controller.adapters.kube.gateway import gateway_rules
from controller.adapters.kube.istio import istio_http
from controller.adapters.kube.names import Owner
from controller.adapters.kube.traffic import Split
from controller.spec.rollout import TrafficRouting


def cleanup(kube: Kube, owner: Owner, *, system: str | None, routing: TrafficRouting | None, port: int) -> None:
    """Undo what modship did for a deleted Rollout: route rules back to stable only (the user's
    HTTPRoute/VirtualService stay), then delete every object labelled with the Rollout."""
    if system is not None and routing is not None:
        idle = Split(stable=None, canary=None)
        if routing.gateway_api is not None:
            name = routing.gateway_api.http_route
            obj = kube.get(HTTPROUTES, owner.namespace, name)
            rules = gateway_rules(
                ((obj or {}).get("spec") or {}).get("rules") or [],
                system=system,
                split=idle,
                port=port,
                mirror_percent=True,
            )
            if obj is not None and rules is not None:
                body = {
                    "apiVersion": HTTPROUTES[0],
                    "kind": "HTTPRoute",
                    "metadata": {"name": name, "namespace": owner.namespace},
                    "spec": {"rules": rules},
                }
                kube.apply(HTTPROUTES, owner.namespace, body)
        elif routing.istio is not None:
            name = routing.istio.virtual_service
            obj = kube.get(VIRTUALSERVICES, owner.namespace, name)
            http = istio_http(((obj or {}).get("spec") or {}).get("http") or [], system=system, split=idle)
            if obj is not None and http is not None:
                body = {
                    "apiVersion": VIRTUALSERVICES[0],
                    "kind": "VirtualService",
                    "metadata": {"name": name, "namespace": owner.namespace},
                    "spec": {"http": http},
                }
                kube.apply(VIRTUALSERVICES, owner.namespace, body)
    selector = f"modship.dev/rollout={owner.name},app.kubernetes.io/managed-by=modship"
    for res in (INGRESSES, SERVICES, DEPLOYMENTS, CONFIGMAPS):
        for obj in kube.items(res, owner.namespace, selector=selector):
            refs = obj["metadata"].get("ownerReferences") or []
            if any(ref.get("uid") == owner.uid for ref in refs):
                kube.delete(res, owner.namespace, obj["metadata"]["name"])
