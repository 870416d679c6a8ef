"""GitOps: the manifests Argo CD or Flux sync for a system, and the edits ``promote --gitops`` makes.

``render`` writes one object per file and a ``kustomization.yaml`` listing them: the ``Rollout`` CR,
a ConfigMap holding the System spec (and the lock, for a SystemLock), and on request the router
object the Rollout names (an HTTPRoute, VirtualService or stable Ingress) sending everything to the
Service ``<system>-stable``. The operator creates and owns the Services (``<system>-stable``,
``<system>-canary``, ``<system>``) and rewrites the route's weights, so neither is rendered as
desired state beyond that skeleton. Output is deterministic: the same input gives the same bytes.

``promote_gitops`` edits only ``spec.revision`` and ``spec.modules`` of the Rollout in a working
tree, leaving every other byte alone (comments and layout included) where the YAML allows it.
``drift`` compares the Git Rollout with the live CR and says where they disagree, e.g. when the
operator rolled the canary back and Git still asks for it.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from controller import atomic
from controller.compose import revision as revisions
from controller.compose.revision import Lock
from controller.entrypoints.output import Format, console, emit
from controller.errors import SpecError
from controller.spec import parse, refs
from controller.spec import rollout as rollouts
from controller.spec import system as systems
from controller.spec.objects import DNS_LABEL
from controller.spec.rollout import Rollout, TrafficRouting, Workload
from controller.spec.system import System

API_VERSION = "modship.dev/v1alpha1"
ROLLOUT_FILE = "rollout.yaml"
KUSTOMIZATION_FILE = "kustomization.yaml"
HEADER = "# Rendered by `modship render`. `modship promote --gitops` edits only spec.revision and spec.modules.\n"
# Every file render may write: files among these that carry HEADER and are not rendered again are stale.
MANAGED_FILES = frozenset(
    {
        ROLLOUT_FILE,
        KUSTOMIZATION_FILE,
        "configmap.yaml",
        "httproute.yaml",
        "virtualservice.yaml",
        "ingress.yaml",
    }
)
REVISION = re.compile(r"^r[0-9a-f]{12}$")
DEFAULT_PORT = int(Workload.model_fields["port"].default)  # BentoML's; the operator's Services use the same port
# Route objects whose rules the operator rewrites (weights, mirrors, header routes): Flux creates them once.
FLUX_CREATE_ONLY = {"kustomize.toolkit.fluxcd.io/ssa": "IfNotPresent"}
ROLLBACK_BY_USER = frozenset({"AbortedByUser"})
_DURATIONS = (("h", 3600.0), ("m", 60.0), ("s", 1.0))
# The CRD spells the key gatewayAPI; the spec model's camelCase alias may read gatewayApi. Parse and
# write through these two so both spellings meet at this boundary (a no-op once they agree).
WIRE_GATEWAY_API = "gatewayAPI"
_MODEL_GATEWAY_API = TrafficRouting.model_fields["gateway_api"].alias or WIRE_GATEWAY_API


class Traffic(enum.StrEnum):
    NONE = "none"
    GATEWAY_API = "gateway-api"
    ISTIO = "istio"
    NGINX = "nginx"


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


# -- YAML out ---------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block style, sequences indented under their key, multi-line strings as ``|`` blocks."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(str, _str)


def dump(doc: dict[str, Any]) -> str:
    return HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def _scalar(value: str) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).removesuffix("\n...\n").strip()


def _flow(values: list[str]) -> str:
    return "[" + ", ".join(_scalar(v) for v in values) + "]"


# -- inputs -----------------------------------------------------------------------------------------


def _document(path: Path) -> dict[str, Any]:
    docs = parse.load_documents(path)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise SpecError(f"expected one YAML mapping, found {len(docs)} document(s)", source=str(path))
    doc: dict[str, Any] = docs[0]
    return doc


def _rename_routing(doc: Any, old: str, new: str) -> Any:
    spec = doc.get("spec") if isinstance(doc, dict) else None
    routing = spec.get("trafficRouting") if isinstance(spec, dict) else None
    if old == new or not isinstance(spec, dict) or not isinstance(routing, dict) or old not in routing:
        return doc
    routing = {new if k == old else k: v for k, v in routing.items()}
    return {**doc, "spec": {**spec, "trafficRouting": routing}}


def parse_rollout(doc: Any, *, source: str | None = None) -> Rollout:
    """A Rollout from its wire form (the CR as the API server and Git hold it)."""
    return rollouts.from_document(_rename_routing(doc, WIRE_GATEWAY_API, _MODEL_GATEWAY_API), source=source)


def _duration(seconds: float) -> str:
    for unit, size in _DURATIONS:
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{round(seconds * 1000)}ms" if seconds else "0s"


def _tidy(value: Any) -> Any:
    """Integral floats as ints (``setWeight: 20``, not ``20.0``), recursively."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _tidy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    return value


def _rollout_spec(r: Rollout, *, semantic: bool = False) -> dict[str, Any]:
    """The wire form of what the spec sets (``semantic``: of what differs from the defaults), durations
    written as ``30s`` (the CRD takes int-or-string)."""
    spec: dict[str, Any] = r.spec.model_dump(
        mode="json", by_alias=True, exclude_none=True, exclude_unset=not semantic, exclude_defaults=semantic
    )
    for check, model in zip(spec.get("analysis", {}).get("checks", []), r.spec.analysis.checks, strict=True):
        for key in ("window", "interval"):
            if key in check:
                check[key] = _duration(getattr(model, key))
    for step, model_step in zip(spec["strategy"]["canary"]["steps"], r.steps, strict=True):
        if model_step.pause is not None and model_step.pause.duration is not None:
            step["pause"]["duration"] = _duration(model_step.pause.duration)
    for key, attr in (("rollbackWindow", "rollback_window"), ("progressDeadline", "progress_deadline")):
        if key in spec.get("policies", {}):
            spec["policies"][key] = _duration(getattr(r.spec.policies, attr))
    wire: dict[str, Any] = _rename_routing({"spec": _tidy(spec)}, _MODEL_GATEWAY_API, WIRE_GATEWAY_API)["spec"]
    return wire


def default_rollout(system: str) -> Rollout:
    """A stepped canary with pauses: what a System gets when no Rollout spec is given."""
    steps: list[dict[str, Any]] = [
        {"setWeight": 10},
        {"pause": {"duration": "2m"}},
        {"setWeight": 50},
        {"pause": {"duration": "5m"}},
    ]
    doc = {"metadata": {"name": system}, "spec": {"system": system, "strategy": {"canary": {"steps": steps}}}}
    return parse_rollout(doc)


def _load_inputs(
    target: Path, rollout_path: Path | None, system_path: Path | None
) -> tuple[Rollout, System | None, Lock | None]:
    doc = _document(target)
    kind = doc.get("kind")
    if kind == "Rollout":
        if rollout_path is not None:
            raise SpecError("the target is a Rollout already: drop --rollout", field="--rollout")
        r = parse_rollout(doc, source=str(target))
        loaded = _system_or_lock(system_path) if system_path is not None else None
    elif kind in ("System", "SystemLock"):
        if system_path is not None:
            raise SpecError("the target is a System already: drop --system", field="--system")
        loaded = _system_or_lock(target)
        name = (loaded.system if isinstance(loaded, Lock) else loaded).metadata.name
        r = (
            parse_rollout(_document(rollout_path), source=str(rollout_path))
            if rollout_path is not None
            else default_rollout(name)
        )
    else:
        raise SpecError(
            f"expected a System, SystemLock or Rollout, got kind {kind!r}", field="kind", source=str(target)
        )
    lock = loaded if isinstance(loaded, Lock) else None
    system = loaded.system if isinstance(loaded, Lock) else loaded
    if system is not None and system.metadata.name != r.spec.system:
        raise SpecError(
            f"the Rollout delivers system {r.spec.system!r} but the System is {system.metadata.name!r}",
            field="spec.system",
        )
    return r, system, lock


def _system_or_lock(path: Path) -> System | Lock:
    doc = _document(path)
    if revisions.is_lock(doc):
        return revisions.load(path)
    return systems.from_document(doc, source=str(path))


# -- manifests --------------------------------------------------------------------------------------


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
    spec = _rollout_spec(r)
    if image:
        spec["workload"] = {**spec.get("workload", {}), "image": image}
    if "workload" not in spec:
        raise SpecError("the Rollout has no spec.workload.image: pass --image REPOSITORY", field="--image")
    if lock is not None and "revision" not in spec:
        spec["revision"] = lock.revision
    route = traffic.route or name
    routing = {
        Traffic.GATEWAY_API: {WIRE_GATEWAY_API: {"httpRoute": route}},
        Traffic.ISTIO: {"istio": {"virtualService": route}},
        Traffic.NGINX: {"nginx": {"ingress": route}},
    }.get(traffic.kind)
    if routing is not None:
        spec["trafficRouting"] = routing
    spec = _ordered(spec)
    labels = {**r.metadata.labels, **_labels(name)}
    meta = _meta(r.name, namespace, labels, dict(r.metadata.annotations))
    cr = {"apiVersion": API_VERSION, "kind": "Rollout", "metadata": meta, "spec": spec}
    out = [Manifest(ROLLOUT_FILE, cr)]
    if system is not None:
        out.append(Manifest("configmap.yaml", _configmap(system, lock, namespace)))
    out += _traffic(name, route, int(spec["workload"].get("port", DEFAULT_PORT)), traffic, namespace)
    return sorted(out, key=lambda m: m.file)


def _ordered(spec: dict[str, Any]) -> dict[str, Any]:
    """The order people read a Rollout in: what, which revision, where it runs, then how."""
    first = ("system", "revision", "modules", "paused", "workload", "trafficRouting", "prometheus")
    return {**{k: spec[k] for k in first if k in spec}, **{k: v for k, v in spec.items() if k not in first}}


def _configmap(system: System, lock: Lock | None, namespace: str | None) -> dict[str, Any]:
    name = system.metadata.name
    labels = _labels(name)
    doc = _tidy(system.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_unset=True))
    doc = {"apiVersion": system.api_version, "kind": system.kind, **doc}
    data = {"system.yaml": yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)}
    if lock is not None:
        labels["modship.dev/revision"] = lock.revision
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
        case Traffic.NONE:
            return []


def _object(api_version: str, kind: str, meta: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": meta, "spec": spec}


def kustomization(files: list[str], namespace: str | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    if namespace:
        doc["namespace"] = namespace
    doc["resources"] = sorted(files)
    return doc


def write(out: Path, items: list[Manifest], namespace: str | None) -> list[Path]:
    """Write every manifest and the kustomization (each file atomically); remove stale rendered files."""
    out.mkdir(parents=True, exist_ok=True)
    texts = {m.file: dump(m.doc) for m in items}
    texts[KUSTOMIZATION_FILE] = dump(kustomization([m.file for m in items], namespace))
    for name in sorted(MANAGED_FILES - texts.keys()):
        stale = out / name
        if stale.is_file() and stale.read_text(encoding="utf-8", errors="replace").startswith(HEADER):
            stale.unlink()
    written = []
    for name, text in sorted(texts.items()):
        path = out / name
        _atomic_write(path, text)
        written.append(path)
    return written


def _atomic_write(path: Path, text: str) -> None:
    atomic.write_text(path, text)


def _check_name(value: str | None, field: str) -> None:
    if value is not None and not DNS_LABEL.match(value):
        raise SpecError(f"{value!r} is not a Kubernetes name (lowercase letters, digits, '-')", field=field)


def render(
    ctx: typer.Context,
    target: Annotated[Path, typer.Argument(help="a System spec, a SystemLock or a Rollout spec (YAML)")],
    out: Annotated[Path, typer.Option("--out", help="directory to write (one file per object + kustomization.yaml)")],
    namespace: Annotated[str | None, typer.Option(help="namespace of every object (default: none, the app's)")] = None,
    image: Annotated[
        str | None, typer.Option(help="image repository of the revisions, or a template holding {revision}")
    ] = None,
    rollout: Annotated[
        Path | None, typer.Option(help="with a System target: its Rollout spec (default: a stepped canary)")
    ] = None,
    system: Annotated[
        Path | None, typer.Option(help="with a Rollout target: the System spec or lock, kept in a ConfigMap")
    ] = None,
    traffic: Annotated[Traffic, typer.Option(help="route with: the Rollout's trafficRouting + a skeleton object")] = (
        Traffic.NONE
    ),
    http_route: Annotated[
        str | None, typer.Option(help="gateway-api: the HTTPRoute name (default: the system)")
    ] = None,
    virtual_service: Annotated[str | None, typer.Option(help="istio: the VirtualService name")] = None,
    ingress: Annotated[str | None, typer.Option(help="nginx: the stable Ingress name")] = None,
    gateway: Annotated[str | None, typer.Option(help="gateway-api: parent Gateway, NAME or NAMESPACE/NAME")] = None,
    host: Annotated[str | None, typer.Option(help="the hostname clients use")] = None,
    ingress_class: Annotated[str, typer.Option(help="nginx: the IngressClass")] = "nginx",
    output: Annotated[Format, typer.Option("--output", "-o", help="table or json")] = Format.TABLE,
) -> None:
    """Render the manifests Argo CD or Flux sync for a system: the Rollout CR, a ConfigMap with the
    System spec, an optional traffic skeleton, and a kustomization.yaml listing them."""
    _check_name(namespace, "--namespace")
    flags = {
        Traffic.GATEWAY_API: ("--http-route", http_route),
        Traffic.ISTIO: ("--virtual-service", virtual_service),
        Traffic.NGINX: ("--ingress", ingress),
    }
    for kind, (flag, value) in flags.items():
        if value is not None and traffic is not kind:
            raise SpecError(f"{flag} needs --traffic {kind}", field=flag)
        if traffic is kind:
            _check_name(value, flag)
    route = flags[traffic][1] if traffic in flags else None
    if gateway is not None and traffic is not Traffic.GATEWAY_API:
        raise SpecError("--gateway needs --traffic gateway-api", field="--gateway")
    r, sys_spec, lock = _load_inputs(target, rollout, system)
    options = TrafficOptions(kind=traffic, route=route, gateway=gateway, host=host, ingress_class=ingress_class)
    items = manifests(r, system=sys_spec, lock=lock, namespace=namespace, image=image, traffic=options)
    paths = write(out, items, namespace)
    emit(
        {"system": r.spec.system, "files": [str(p) for p in paths]},
        output,
        lambda d: console.print(f"rendered {len(paths)} file(s) for [bold]{d['system']}[/] into {out}"),
    )


# -- promote --gitops -------------------------------------------------------------------------------


def find_rollout(directory: Path, system: str) -> Path:
    """``DIR/rollout.yaml``, ``DIR/<system>/rollout.yaml``, or DIR itself when it is a file."""
    if directory.is_file():
        return directory
    candidates = [directory / ROLLOUT_FILE, directory / system / ROLLOUT_FILE]
    for path in candidates:
        if path.is_file():
            return path
    raise SpecError(
        f"no Rollout manifest for system {system!r}: looked for {' and '.join(str(p) for p in candidates)}",
        source=str(directory),
    )


def _load_rollout(path: Path, system: str | None) -> tuple[str, dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    docs = parse.parse_text(text, source=str(path))
    doc = docs[0]
    if (
        len(docs) != 1
        or not isinstance(doc, dict)
        or doc.get("kind") != "Rollout"
        or doc.get("apiVersion") != API_VERSION
    ):
        kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
        raise SpecError(
            f"not a Rollout manifest (expected one {API_VERSION} Rollout; "
            f"found {len(docs)} document(s), kind {kind!r})",
            source=str(path),
        )
    parse_rollout(doc, source=str(path))
    if system is not None and doc["spec"].get("system") != system:
        raise SpecError(
            f"the Rollout delivers system {doc['spec'].get('system')!r}, not {system!r}",
            field="spec.system",
            source=str(path),
        )
    return text, doc


def promote_gitops(dir: Path, system: str, revision: str, modules: list[str]) -> Path:
    """Set spec.revision and spec.modules of ``system``'s Rollout in a Git working tree; return its path.

    Only those two values change; other bytes stay as they were unless the file's YAML style makes a
    surgical edit impossible (a flow-style spec), in which case the document is rewritten. Refuses
    (SpecError) when there is no Rollout file, it is not a Rollout for ``system``, or the values are bad.
    """
    if not REVISION.match(revision):
        raise SpecError(f"{revision!r} is not a revision id (r + 12 hex digits)", field="revision")
    for i, m in enumerate(modules):
        refs.parse(m, field=f"modules[{i}]", require_qualifier=True)
    path = find_rollout(dir, system)
    text, doc = _load_rollout(path, system)
    expected = json.loads(json.dumps(doc))
    expected["spec"]["revision"] = revision
    if modules or "modules" in doc["spec"]:
        expected["spec"]["modules"] = list(modules)
    edited = _edit(text, revision, list(modules))
    if edited is None or yaml.safe_load(edited) != expected:
        edited = dump(expected)
    parse_rollout(yaml.safe_load(edited), source=str(path))
    if edited != text:
        _atomic_write(path, edited)
    return path


def _edit(text: str, revision: str, modules: list[str]) -> str | None:
    """Splice the new values into ``text`` by position; None when the layout is not a block mapping."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    spec = _child(root, "spec")
    if not isinstance(spec, yaml.MappingNode) or spec.flow_style:
        return None
    entries = {k.value: (k, v) for k, v in spec.value if isinstance(k, yaml.ScalarNode)}
    if "system" not in entries:
        return None
    edits: list[tuple[int, int, str]] = []
    sys_key, sys_value = entries["system"]
    eol = text.find("\n", sys_value.end_mark.index)
    insert_at, newline = (eol + 1, "") if eol >= 0 else (len(text), "\n")
    pad = " " * sys_key.start_mark.column
    inserted = newline
    if "revision" in entries:
        value = entries["revision"][1]
        if not isinstance(value, yaml.ScalarNode) or value.start_mark.index == value.end_mark.index:
            return None
        edits.append((value.start_mark.index, value.end_mark.index, _scalar(revision)))
    else:
        inserted += f"{pad}revision: {_scalar(revision)}\n"
    if "modules" in entries:
        key, value = entries["modules"]
        span = _sequence_edit(text, key, value, modules)
        if span is None:
            return None
        edits.append(span)
    elif modules:
        inserted += f"{pad}modules: {_flow(modules)}\n"
    if inserted != newline:
        edits.append((insert_at, insert_at, inserted))
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    return next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key), None)


def _sequence_edit(text: str, key: yaml.Node, value: yaml.Node, modules: list[str]) -> tuple[int, int, str] | None:
    if not isinstance(value, yaml.SequenceNode) or not all(isinstance(i, yaml.ScalarNode) for i in value.value):
        return None
    if value.flow_style or not value.value:
        return value.start_mark.index, value.end_mark.index, _flow(modules)
    end = value.value[-1].end_mark.index
    if not modules:  # an empty block sequence does not exist: switch to [] right after the colon
        colon = text.index(":", key.end_mark.index)
        return colon + 1, end, " []"
    pad = "\n" + " " * value.start_mark.column
    return value.start_mark.index, end, pad.join(f"- {_scalar(m)}" for m in modules)


# -- drift ------------------------------------------------------------------------------------------


def _normal(spec: Any) -> Any:
    try:
        r = parse_rollout({"metadata": {"name": "x"}, "spec": spec})
    except SpecError:
        return spec
    return _rollout_spec(r, semantic=True)


def _differences(git: Any, live: Any, path: str) -> list[tuple[str, Any, Any]]:
    if isinstance(git, dict) and isinstance(live, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(git.keys() | live.keys()):
            out += _differences(git.get(key), live.get(key), f"{path}.{key}")
        return out
    if isinstance(git, list) and isinstance(live, list) and len(git) == len(live):
        return [d for i, (g, c) in enumerate(zip(git, live, strict=True)) for d in _differences(g, c, f"{path}[{i}]")]
    return [] if git == live else [(path, git, live)]


def _show(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value, separators=(", ", ": "))


def drift(dir: Path, live_cr: dict[str, Any]) -> list[str]:
    """Where the Rollout in Git and the live CR disagree, as sentences; [] when they agree.

    Spec fields that differ (not synced yet, or edited in the cluster), and what runs versus what
    Git asks for: a rollback, an abort or a revision the operator has not started.
    """
    live_spec = live_cr.get("spec") or {}
    system = live_spec.get("system") or (live_cr.get("metadata") or {}).get("name")
    if not isinstance(system, str):
        raise SpecError("the live object has neither spec.system nor metadata.name", field="spec.system")
    path = find_rollout(dir, system)
    _, git = _load_rollout(path, system)
    out = [
        f"{field}: Git has {_show(g)}, the cluster has {_show(c)}"
        for field, g, c in _differences(_normal(git["spec"]), _normal(live_spec), "spec")
    ]
    want = git["spec"].get("revision")
    status = live_cr.get("status") or {}
    note = _running(want, status) if want else None
    return [*out, note] if note else out


def _running(want: str, status: dict[str, Any]) -> str | None:
    phase = status.get("phase")
    stable, canary = status.get("stableRevision"), status.get("canaryRevision")
    if stable == want or (canary == want and phase in ("Progressing", "Paused", None)):
        return None  # promoted, or on its way
    runs = f"the cluster runs {stable or 'no stable revision'}"
    reason = status.get("reason") or ""
    why = f"{reason}: {status['message']}" if status.get("message") else reason or "no reason recorded"
    if phase in ("Aborted", "Failed") and canary == want:
        if reason in ROLLBACK_BY_USER:
            return f"Git asks for {want}, {runs}: the rollout was aborted by a user (reason {why})"
        return f"Git asks for {want}, {runs} after an automatic rollback (reason {why})"
    if reason == "RolledBack":
        return f"Git asks for {want}, {runs} after a manual rollback (modship undo)"
    return f"Git asks for {want}, {runs} (phase {phase or 'unknown'}): the operator has not started {want} yet"


def promote_in_tree(
    obj: Any, dir: Path, system: str, modules: list[str], *, spec: Path | None, force: bool
) -> dict[str, Any]:
    """``modship promote --gitops DIR``: compose the next revision from the lock kept in the tree's
    ConfigMap (or from ``spec``), check and contract-test it, then edit the Rollout manifest and the
    ConfigMap in place: a commit-ready change for Argo CD or Flux to sync."""
    from controller.apply import promotion
    from controller.compose import rebase as rebasing
    from controller.spec import system as system_spec

    cm_path = dir / "configmap.yaml"
    notes: list[str] = []
    if spec is not None:
        new = system_spec.load(spec)
    else:
        if not cm_path.exists():
            raise SpecError(f"no configmap.yaml with the current lock in {dir}: render it first, or pass --spec",
                            field="--gitops")  # fmt: skip
        cm = _document(cm_path)
        lock_text = (cm.get("data") or {}).get("lock.yaml")
        if not lock_text:
            raise SpecError("the ConfigMap holds no lock.yaml: pass --spec", source=str(cm_path))
        base = parse.to_model(Lock, yaml.safe_load(lock_text), source=f"{cm_path}: lock.yaml")

        def resolve(ref: str) -> Any:
            return obj.registry.resolve(refs.parse(ref))

        new, notes = rebasing.rebase(base.system, modules, resolve)
    lock, _, overrides = promotion.checked_lock(obj.registry, new, cache=obj.settings.module_cache, force=force)
    path = promote_gitops(dir, system, lock.revision, modules)
    if cm_path.exists():
        cm = _document(cm_path)
        system_doc = {
            "apiVersion": new.api_version,
            "kind": new.kind,
            **_tidy(new.model_dump(mode="json", by_alias=True, exclude_none=True)),
        }
        cm["data"] = {
            **(cm.get("data") or {}),
            "lock.yaml": revisions.dump(lock),
            "system.yaml": yaml.dump(system_doc, Dumper=_Dumper, sort_keys=False, width=120),
        }
        cm.setdefault("metadata", {}).setdefault("labels", {})["modship.dev/revision"] = lock.revision
        _atomic_write(cm_path, dump(cm))
    return {"file": str(path), "revision": lock.revision, "changes": notes, "overrides": overrides}
