"""The manifests Argo CD or Flux sync for a system, as data and as text. Pure: no I/O.

One object per file and a ``kustomization.yaml`` listing them: the ``Rollout`` CR, a ConfigMap
holding the System spec (and the lock, for a SystemLock), and on request the router object the
Rollout names (an HTTPRoute, VirtualService or stable Ingress) sending everything to the Service
``<system>-stable``. The operator creates and owns the Services (``<system>-stable``,
``<system>-canary``, ``<system>``) and rewrites the route's weights, so neither is rendered as desired
state beyond that skeleton. The same input gives the same bytes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import yaml

from controller.compose import revision as revisions
from controller.compose.revision import Lock
from controller.errors import SpecError
from controller.spec import wire
from controller.spec.rollout import Rollout
from controller.spec.system import System

ROLLOUT_FILE = "rollout.yaml"
CONFIGMAP_FILE = "configmap.yaml"
KUSTOMIZATION_FILE = "kustomization.yaml"
HEADER = "# Rendered by `modship render`. `modship promote --gitops` edits only spec.revision and spec.modules.\n"
# Every file render may write: files among these that carry HEADER and are not rendered again are stale.
MANAGED_FILES = frozenset(
    {ROLLOUT_FILE, KUSTOMIZATION_FILE, CONFIGMAP_FILE, "httproute.yaml", "virtualservice.yaml", "ingress.yaml"}
)
# Route objects whose rules the operator rewrites (weights, mirrors, header routes): Flux creates them once.
FLUX_CREATE_ONLY = {"kustomize.toolkit.fluxcd.io/ssa": "IfNotPresent"}
REVISION_LABEL = "modship.dev/revision"


class Traffic(enum.StrEnum):
    NONE = "none"
    GATEWAY_API = "gateway-api"
    ISTIO = "istio"
    NGINX = "nginx"
    MODSHIP = "modship"  # modship's router in the cluster: no user object to render


@dataclass(frozen=True, slots=True)
class TrafficOptions:
    kind: Traffic = Traffic.NONE
    route: str | None = None  # the HTTPRoute, VirtualService or Ingress name (default: the system's)
    gateway: str | None = None  # gateway-api parentRef: NAME or NAMESPACE/NAME
    host: str | None = None
    ingress_class: str = "nginx"


@dataclass(frozen=True, slots=True)
class Manifest:
    file: str
    doc: dict[str, Any]


# -- text -------------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block style, sequences indented under their key, multi-line strings as ``|`` blocks."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(str, _str)


def to_yaml(doc: dict[str, Any]) -> str:
    """A document as modship writes YAML (no header)."""
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def dump(doc: dict[str, Any]) -> str:
    """A rendered file: the header, then the document."""
    return HEADER + to_yaml(doc)


def texts(items: list[Manifest], namespace: str | None) -> dict[str, str]:
    """File name -> content for every manifest and the kustomization listing them."""
    out = {m.file: dump(m.doc) for m in items}
    out[KUSTOMIZATION_FILE] = dump(kustomization([m.file for m in items], namespace))
    return out


def system_yaml(system: System, *, only_set: bool = True) -> str:
    """The System spec as the ConfigMap holds it (``only_set``: the fields the spec sets)."""
    doc = wire.tidy(system.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_unset=only_set))
    return to_yaml({"apiVersion": system.api_version, "kind": system.kind, **doc})


# -- objects ----------------------------------------------------------------------------------------


def _meta(
    name: str, namespace: str | None, labels: dict[str, str], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    return meta


def _labels(system: str) -> dict[str, str]:
    return {"app.kubernetes.io/part-of": "modship", "modship.dev/system": system}


def manifests(
    r: Rollout,
    *,
    system: System | None = None,
    lock: Lock | None = None,
    namespace: str | None = None,
    image: str | None = None,
    traffic: TrafficOptions = TrafficOptions(),
) -> list[Manifest]:
    """Every object to sync for ``r``, one per file, in file-name order."""
    name = r.spec.system
    spec = wire.rollout_spec(r)
    if image:
        spec["workload"] = {**spec.get("workload", {}), "image": image}
    if "workload" not in spec:
        raise SpecError("the Rollout has no spec.workload.image: pass --image REPOSITORY", field="--image")
    if lock is not None and "revision" not in spec:
        spec["revision"] = lock.revision
    route = traffic.route or name
    routing = {
        Traffic.GATEWAY_API: {"gatewayAPI": {"httpRoute": route}},
        Traffic.ISTIO: {"istio": {"virtualService": route}},
        Traffic.NGINX: {"nginx": {"ingress": route}},
        Traffic.MODSHIP: {"modship": {}},
    }.get(traffic.kind)
    if routing is not None:
        spec["trafficRouting"] = routing
    spec = wire.ordered(spec)
    labels = {**r.metadata.labels, **_labels(name)}
    meta = _meta(r.name, namespace, labels, dict(r.metadata.annotations))
    cr = {"apiVersion": wire.API_VERSION, "kind": "Rollout", "metadata": meta, "spec": spec}
    out = [Manifest(ROLLOUT_FILE, cr)]
    if system is not None:
        out.append(Manifest(CONFIGMAP_FILE, _configmap(system, lock, namespace)))
    out += _traffic(name, route, int(spec["workload"].get("port", wire.DEFAULT_PORT)), traffic, namespace)
    return sorted(out, key=lambda m: m.file)


def _configmap(system: System, lock: Lock | None, namespace: str | None) -> dict[str, Any]:
    name = system.metadata.name
    labels = _labels(name)
    data = {"system.yaml": system_yaml(system)}
    if lock is not None:
        labels[REVISION_LABEL] = lock.revision
        data["lock.yaml"] = revisions.dump(lock)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(f"{name}-system", namespace, labels),
        "data": data,
    }


def _traffic(system: str, route: str, port: int, t: TrafficOptions, namespace: str | None) -> list[Manifest]:
    """The router object at rest: all traffic to ``<system>-stable`` (what the operator writes when idle)."""
    stable = f"{system}-stable"
    match t.kind:
        case Traffic.GATEWAY_API:
            spec: dict[str, Any] = {}
            if t.gateway:
                gw_ns, _, gw = t.gateway.rpartition("/")
                spec["parentRefs"] = [{"name": gw, **({"namespace": gw_ns} if gw_ns else {})}]
            if t.host:
                spec["hostnames"] = [t.host]
            spec["rules"] = [{"backendRefs": [{"name": stable, "port": port, "weight": 100}]}]
            meta = _meta(route, namespace, _labels(system), FLUX_CREATE_ONLY)
            return [Manifest("httproute.yaml", _object("gateway.networking.k8s.io/v1", "HTTPRoute", meta, spec))]
        case Traffic.ISTIO:
            dest = {"destination": {"host": stable, "port": {"number": port}}, "weight": 100}
            # Clients call the root Service <system>, which the operator creates next to stable/canary.
            spec = {"hosts": [t.host or system], "http": [{"name": "primary", "route": [dest]}]}
            meta = _meta(route, namespace, _labels(system), FLUX_CREATE_ONLY)
            return [Manifest("virtualservice.yaml", _object("networking.istio.io/v1", "VirtualService", meta, spec))]
        case Traffic.NGINX:  # the operator leaves this one alone and manages a canary twin of it
            backend = {"service": {"name": stable, "port": {"number": port}}}
            rule: dict[str, Any] = {"http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}
            if t.host:
                rule = {"host": t.host, **rule}
            spec = {"ingressClassName": t.ingress_class, "rules": [rule]}
            meta = _meta(route, namespace, _labels(system))
            return [Manifest("ingress.yaml", _object("networking.k8s.io/v1", "Ingress", meta, spec))]
        case Traffic.NONE | Traffic.MODSHIP:
            return []


def _object(api_version: str, kind: str, meta: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": meta, "spec": spec}


def kustomization(files: list[str], namespace: str | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    if namespace:
        doc["namespace"] = namespace
    doc["resources"] = sorted(files)
    return doc
