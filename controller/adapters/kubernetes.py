"""The Target port on Kubernetes: a Deployment per revision, Services, and a traffic split.

Per revision ``R`` of system ``S``: Deployment ``S-R`` and ConfigMap ``S-R-flags`` (the feature-flag
file the workload reads through ``MODSHIP_FLAGS_FILE``). Per system: Services ``S-stable`` and
``S-canary`` (selecting a revision; canary selects stable while nothing is in flight) and ``S``
(every revision; traffic in replica-ratio mode). Traffic goes through the Rollout's
``trafficRouting``: weighted backendRefs of a Gateway API HTTPRoute, weighted routes of an Istio
VirtualService, or a canary twin of an NGINX Ingress; without one, replica ratios (coarse: at least
one canary pod runs while a canary is in flight, and the warm previous revision scales to zero,
since the root Service would send it traffic). What a router cannot do (mirroring with NGINX or
replica ratios, a mirror percentage the HTTPRoute CRD lacks) becomes a status condition in
``notes``, never a silent no-op.

Writes are server-side apply with one field manager; ``force`` only after a conflict, when another
manager owns a field we must set (the rules of a user's HTTPRoute or VirtualService, a hand edit of
an object modship owns), and logged. ``Applied``
remembers what this process applied, so an unchanged cycle costs no API call; entries expire so
hand edits are undone within ``Applied.ttl``. ``Kube.request`` is the one choke point where API
errors become modship errors: conflicts, timeouts, throttling and 5xx -> Unavailable; 400/422 ->
SpecError; 404 -> NotFound.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from controller.errors import Conflict, ModshipError, NotFound, SpecError, Unavailable
from controller.plan.actions import SetTraffic
from controller.plan.observations import Health, QueryContext, Sample
from controller.plan.status import RolloutStatus
from controller.spec.rollout import Check, Rollout, TrafficRouting, Workload

log = logging.getLogger("modship.kubernetes")

FIELD_MANAGER = "modship"
GROUP_VERSION = "modship.dev/v1alpha1"
MANAGED_BY = {"app.kubernetes.io/managed-by": "modship"}
FLAGS_DIR = "/etc/modship/flags"
HEADER_RULE = "modship-canary-header"
CANARY_ANNOTATION = "nginx.ingress.kubernetes.io/canary"
TOGGLES_DIGEST = "modship.dev/toggles-digest"

Json = dict[str, Any]
Resource = tuple[str, str]  # (group/version, plural)
DEPLOYMENTS: Resource = ("apps/v1", "deployments")
SERVICES: Resource = ("v1", "services")
CONFIGMAPS: Resource = ("v1", "configmaps")
PODS: Resource = ("v1", "pods")
EVENTS: Resource = ("v1", "events")
INGRESSES: Resource = ("networking.k8s.io/v1", "ingresses")
HTTPROUTES: Resource = ("gateway.networking.k8s.io/v1", "httproutes")
VIRTUALSERVICES: Resource = ("networking.istio.io/v1", "virtualservices")
ROLLOUTS: Resource = (GROUP_VERSION, "rollouts")
LEASES: Resource = ("coordination.k8s.io/v1", "leases")
CRDS: Resource = ("apiextensions.k8s.io/v1", "customresourcedefinitions")
_KINDS = {
    DEPLOYMENTS: "Deployment",
    SERVICES: "Service",
    CONFIGMAPS: "ConfigMap",
    INGRESSES: "Ingress",
    HTTPROUTES: "HTTPRoute",
    VIRTUALSERVICES: "VirtualService",
}


# -- the API, with one choke point for errors ------------------------------------------------------


class KubeUnavailable(Unavailable):
    """Unavailable, with the HTTP status and Kubernetes reason (``AlreadyExists``, ``Conflict``...)."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "", delay: float = 1.0) -> None:
        super().__init__(message, delay=delay)
        self.status, self.reason = status, reason


def connect(kubeconfig: str | None = None, context: str | None = None, *, pool: int = 16) -> tuple[ApiClient, str]:
    """An API client from a kubeconfig (``$KUBECONFIG``, ``~/.kube/config``) or, in a pod, the
    service account; and the namespace the context names (default ``default``)."""
    import os
    from pathlib import Path

    from kubernetes import client
    from kubernetes import config as kube_config

    config: Any = kube_config

    cfg = client.Configuration()
    file = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(Path.home() / ".kube/config")
    namespace = "default"
    try:
        if kubeconfig or context or Path(file).exists():
            config.load_kube_config(config_file=file, context=context, client_configuration=cfg)
            _, active = config.list_kube_config_contexts(config_file=file)
            chosen = next((c for c in config.list_kube_config_contexts(file)[0] if c["name"] == context), active)
            namespace = (chosen or {}).get("context", {}).get("namespace") or namespace
        else:
            config.load_incluster_config(client_configuration=cfg)
            sa = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            namespace = sa.read_text().strip() if sa.exists() else namespace
    except (config.ConfigException, OSError, KeyError, ValueError) as exc:
        raise Unavailable(
            f"no usable Kubernetes credentials ({file}{', context ' + context if context else ''}): {exc}"
        ) from exc
    cfg.connection_pool_maxsize = pool
    return ApiClient(cfg), namespace


def path(res: Resource, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
    gv, plural = res
    out = "/api/v1" if gv == "v1" else f"/apis/{gv}"
    if namespace is not None:
        out += f"/namespaces/{namespace}"
    out += f"/{plural}"
    if name is not None:
        out += f"/{name}"
    if sub is not None:
        out += f"/{sub}"
    return out


class Kube:
    """Raw JSON requests over ``kubernetes.client.ApiClient`` (no model classes: they are slow and
    large). Thread-safe: the client's urllib3 pool is shared."""

    def __init__(self, api: ApiClient, *, field_manager: str = FIELD_MANAGER, timeout: float = 10.0) -> None:
        self.api = api
        self.field_manager = field_manager
        self.timeout = timeout

    def request(
        self,
        method: str,
        url: str,
        *,
        body: Any = None,
        query: Iterable[tuple[str, str]] = (),
        content_type: str | None = None,
    ) -> Json:
        """One request; the JSON answer. Raises NotFound, SpecError, Conflict (field-manager
        conflicts of server-side apply only) or Unavailable (everything a retry may fix)."""
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        what = f"{method} {url}"
        try:
            req = self.api.param_serialize(
                method, url, query_params=list(query), header_params=headers, body=body, auth_settings=["BearerToken"]
            )
            resp: Any = self.api.call_api(*req, _request_timeout=(min(self.timeout, 5.0), self.timeout))
            data = resp.read()
            status = int(resp.status)
        except (urllib3.exceptions.HTTPError, ApiException, OSError) as exc:
            raise KubeUnavailable(f"{what}: the API server is not answering ({type(exc).__name__}: {exc})") from exc
        try:
            doc = orjson.loads(data) if data else {}
        except orjson.JSONDecodeError:
            doc = {"message": data[:200].decode(errors="replace")}
        if status < 300:
            return doc if isinstance(doc, dict) else {"items": doc}
        raise _error(status, doc, what, resp.getheader("Retry-After"))

    def get(self, res: Resource, namespace: str | None, name: str) -> Json | None:
        """The object, or None when it does not exist."""
        try:
            return self.request("GET", path(res, namespace, name))
        except NotFound:
            return None

    def items(self, res: Resource, namespace: str | None, *, selector: str | None = None) -> list[Json]:
        query = [("labelSelector", selector)] if selector else []
        items = self.request("GET", path(res, namespace), query=query).get("items") or []
        return [x for x in items if isinstance(x, dict)]

    def apply(self, res: Resource, namespace: str | None, body: Json, *, sub: str | None = None) -> Json:
        """Server-side apply as ``field_manager``. Another manager owning a field we set is taken
        over (``force``), logged: modship is the controller of what it applies."""
        name = body["metadata"]["name"]
        try:
            return self._apply(res, namespace, name, body, sub=sub, force=False)
        except Conflict as exc:
            log.info("%s %s/%s: taking over fields from another manager (%s)", res[1], namespace, name, exc)
            return self._apply(res, namespace, name, body, sub=sub, force=True)

    def _apply(self, res: Resource, ns: str | None, name: str, body: Json, *, sub: str | None, force: bool) -> Json:
        query = [("fieldManager", self.field_manager), ("fieldValidation", "Strict")]
        if force:
            query.append(("force", "true"))
        url = path(res, ns, name, sub)
        return self.request("PATCH", url, body=body, query=query, content_type="application/apply-patch+yaml")

    def patch(
        self, res: Resource, namespace: str | None, name: str, ops: list[Json], *, sub: str | None = None
    ) -> Json:
        """A JSON patch (``ops``); add ``{"op": "test", ...}`` or a resourceVersion for preconditions."""
        url = path(res, namespace, name, sub)
        return self.request(
            "PATCH",
            url,
            body=ops,
            query=[("fieldManager", self.field_manager)],
            content_type="application/json-patch+json",
        )

    def merge(self, res: Resource, namespace: str | None, name: str, body: Json) -> Json:
        url = path(res, namespace, name)
        query = [("fieldManager", self.field_manager)]
        return self.request("PATCH", url, body=body, query=query, content_type="application/merge-patch+json")

    def create(self, res: Resource, namespace: str | None, body: Json) -> Json:
        query = [("fieldManager", self.field_manager)]
        return self.request("POST", path(res, namespace), body=body, query=query)

    def delete(self, res: Resource, namespace: str | None, name: str) -> None:
        """Delete (background propagation); a missing object is not an error."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        with contextlib.suppress(NotFound):
            self.request("DELETE", path(res, namespace, name), body=body)


def _error(status: int, doc: Json, what: str, retry_after: str | None) -> ModshipError:
    reason = str(doc.get("reason") or "")
    message = f"{what}: {doc.get('message') or reason or status}"
    causes = (doc.get("details") or {}).get("causes") or []
    if status == 404:
        return NotFound(message)
    if status == 409 and any(c.get("reason") == "FieldManagerConflict" for c in causes):
        return Conflict(message)
    if status in (400, 422):
        fields = [str(c.get("field")) for c in causes if c.get("field")]
        return SpecError(message, field=fields[0] if fields else None)
    delay = 1.0
    if status == 429 and retry_after and retry_after.isdigit():
        delay = float(retry_after)
    if status in (401, 403):
        message += " (check the operator's credentials and RBAC)"
        delay = 10.0
    return KubeUnavailable(message, status=status, reason=reason, delay=delay)


# -- names and labels -------------------------------------------------------------------------------


def deployment_name(system: str, revision: str) -> str:
    return f"{system}-{revision}"


def flags_name(system: str, revision: str) -> str:
    return f"{system}-{revision}-flags"


def service_names(system: str) -> tuple[str, str, str]:
    """(stable, canary, root)."""
    return f"{system}-stable", f"{system}-canary", system


def labels(system: str, rollout: str, revision: str | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": system,
        "modship.dev/system": system,
        "modship.dev/rollout": rollout,
        **MANAGED_BY,
    }
    if revision is not None:
        out["modship.dev/revision"] = revision
    return out


@dataclass(frozen=True, slots=True)
class Owner:
    """The Rollout that owns what the adapter creates (garbage-collected with it)."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> Json:
        return {
            "apiVersion": GROUP_VERSION,
            "kind": "Rollout",
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def _meta(name: str, owner: Owner, lbls: dict[str, str], annotations: dict[str, str] | None = None) -> Json:
    meta: Json = {"name": name, "namespace": owner.namespace, "labels": lbls, "ownerReferences": [owner.reference()]}
    if annotations:
        meta["annotations"] = annotations
    return meta


# -- what this process applied, and the health of Deployments (fed by a watch) ---------------------------


class Applied:
    """Content hashes of what this process applied, per object; unchanged content is not re-sent
    until ``ttl`` passes (then it is, so drift is repaired). Thread-safe."""

    def __init__(self, ttl: float = 300.0) -> None:
        self.ttl = ttl
        self._seen: dict[str, tuple[str, float]] = {}
        self._writes = 0
        self._lock = threading.Lock()

    @staticmethod
    def digest(body: Any) -> str:
        return hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS), digest_size=12).hexdigest()

    def fresh(self, key: str, digest: str) -> bool:
        with self._lock:
            seen = self._seen.get(key)
        return seen is not None and seen[0] == digest and time.monotonic() - seen[1] < self.ttl

    def remember(self, key: str, digest: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._seen[key] = (digest, now)
            self._writes += 1
            if self._writes % 4096 == 0:  # drop what expired (deleted Rollouts' objects)
                self._seen = {k: v for k, v in self._seen.items() if now - v[1] < self.ttl}

    def forget(self, prefix: str) -> None:
        with self._lock:
            for k in [k for k in self._seen if k.startswith(prefix)]:
                del self._seen[k]


@dataclass(frozen=True, slots=True)
class DeploymentState:
    """What health needs from a Deployment, kept small: thousands are held in memory."""

    desired: int
    ready: bool
    failure: str | None = None
    created: str = ""


def deployment_state(d: Json) -> DeploymentState:
    spec, st, meta = d.get("spec") or {}, d.get("status") or {}, d.get("metadata") or {}
    desired = int(spec.get("replicas", 1))
    current = int(st.get("observedGeneration", 0)) >= int(meta.get("generation", 0))
    ok = (
        current
        and int(st.get("updatedReplicas", 0)) >= desired
        and int(st.get("availableReplicas", 0)) >= desired
        and int(st.get("replicas", 0)) <= desired
    )
    failure = None
    for c in st.get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("status") == "False" and c.get("reason"):
            failure = f"{c['reason']}: {c.get('message', '')}".strip()
        elif c.get("type") == "ReplicaFailure" and c.get("status") == "True":
            failure = f"ReplicaFailure: {c.get('reason', '')} {c.get('message', '')}".strip()
    return DeploymentState(desired, ok, failure, str(meta.get("creationTimestamp", "")))


class DeploymentIndex:
    """Health of modship's Deployments, kept current by a watch (the operator feeds ``put`` and
    ``drop``); ``get`` None means unknown, and the Target reads the Deployment itself."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], DeploymentState] = {}
        self._lock = threading.Lock()

    def put(self, namespace: str, name: str, state: DeploymentState) -> bool:
        """Record; True when readiness or failure changed (worth waking the rollout)."""
        with self._lock:
            old = self._states.get((namespace, name))
            self._states[(namespace, name)] = state
        return old is None or (old.ready, old.failure, old.desired) != (state.ready, state.failure, state.desired)

    def drop(self, namespace: str, name: str) -> None:
        with self._lock:
            self._states.pop((namespace, name), None)

    def get(self, namespace: str, name: str) -> DeploymentState | None:
        with self._lock:
            return self._states.get((namespace, name))

    def __len__(self) -> int:
        return len(self._states)


_POD_FAILURES = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError", "CrashLoopBackOff"}
)
POD_CHECK_EVERY = 10.0
READ_EVERY = 5.0  # a Deployment the watch has not shown is read directly at most this often


# -- the Target -------------------------------------------------------------------------------------


@dataclass
class Split:
    """The traffic split being enforced: from the persisted status, then from ``route``."""

    stable: str | None
    canary: str | None
    weight: float = 0.0
    header_route: tuple[str, str | None] | None = None
    mirror: float = 0.0

    @classmethod
    def of(cls, s: RolloutStatus) -> Split:
        in_flight = s.in_flight
        if not in_flight:
            return cls(s.stable, None)
        return cls(s.stable, s.canary, s.traffic.weight, s.traffic.header_route, s.traffic.mirror)


@dataclass
class Shared:
    """What every rollout's Target shares in one process."""

    kube: Kube
    applied: Applied = field(default_factory=Applied)
    index: DeploymentIndex = field(default_factory=DeploymentIndex)
    pod_checks: dict[str, tuple[float, str | None]] = field(default_factory=dict)
    reads: dict[str, float] = field(default_factory=dict)  # Deployments read past the index, when
    mirror_percent: bool | None = None  # does the installed HTTPRoute CRD have requestMirror.percent?


class KubernetesTarget:
    """The Target port for one Rollout; built per reconcile (cheap), state lives in ``Shared``.

    ``notes`` collects conditions ({type: (ok, reason, message)}) for the status the store writes.
    """

    def __init__(
        self,
        shared: Shared,
        rollout: Rollout,
        *,
        owner: Owner,
        status: RolloutStatus,
        toggles: Mapping[str, Mapping[str, Any]] | None = None,
        notes: dict[str, tuple[bool, str, str]] | None = None,
    ) -> None:
        if rollout.spec.workload is None:
            raise SpecError(
                "a Rollout on Kubernetes needs spec.workload (image, replicas, port)", field="spec.workload"
            )
        self.shared, self.kube, self.r, self.owner = shared, shared.kube, rollout, owner
        self.workload: Workload = rollout.spec.workload
        self.system = rollout.spec.system
        self.ns = owner.namespace
        self.routing: TrafficRouting = rollout.spec.traffic_routing or TrafficRouting()
        self.split = Split.of(status)
        self.toggles = {k: dict(v) for k, v in (toggles or {}).items()}
        self.notes = notes if notes is not None else {}
        self._roles: dict[str, str] = {}

    # -- Target port ----------------------------------------------------------------------------
    def ensure(self, revision: str, role: str) -> None:
        self._roles[revision] = role
        if role != "canary":  # the canary's flag file is written whole by ``flags`` in the same cycle
            self._sync_toggles(revision)
        self._apply(DEPLOYMENTS, self._deployment(revision, self._replicas(revision, role)))

    def stop(self, revision: str) -> None:
        for res, name in ((DEPLOYMENTS, deployment_name(self.system, revision)), (CONFIGMAPS, self._flags(revision))):
            self.kube.delete(res, self.ns, name)
            self.shared.applied.forget(self._key(res, name))
        self.shared.applied.forget(self._key(("", "toggles"), self._flags(revision)))
        self.shared.index.drop(self.ns, deployment_name(self.system, revision))

    def route(self, traffic: SetTraffic) -> None:
        self.split = Split(traffic.stable, traffic.canary, traffic.weight, traffic.header_route, traffic.mirror)
        self._unmapped(traffic)
        self._services()
        r = self.routing
        if r.gateway_api is not None:
            self._gateway(r.gateway_api.http_route)
        elif r.istio is not None:
            self._istio(r.istio.virtual_service)
        elif r.nginx is not None:
            self._nginx(r.nginx.ingress)
        else:
            self._ratios()

    def flags(self, revision: str, flags: tuple[tuple[str, bool, float], ...]) -> None:
        merged = {**self.toggles, **{n: {"enabled": e, "percent": p} for n, e, p in flags}}
        self._apply(CONFIGMAPS, self._configmap(revision, merged))
        self.shared.applied.remember(self._key(("", "toggles"), self._flags(revision)), Applied.digest(self.toggles))

    def health(self, stable: str | None, canary: str | None) -> Health:
        s = self._state(stable) if stable else None
        c = self._state(canary) if canary else None
        failed = c.failure if c is not None else None
        if canary is not None and c is not None and not c.ready and failed is None:
            failed = self._pod_failure(canary)
        return Health(
            stable_ready=s is not None and s.ready,
            canary_ready=c is not None and c.ready,
            canary_failed=f"canary {canary}: {failed}" if failed else None,
        )

    # -- revisions --------------------------------------------------------------------------------
    def _replicas(self, revision: str, role: str) -> int:
        n = self.workload.replicas
        if self.routing != TrafficRouting():
            return n
        sp = self.split
        if role == "previous" and revision not in (sp.stable, sp.canary):
            return 0  # the root Service selects every revision: a warm previous one would get traffic
        if sp.canary is None:
            return n
        canary = max(1, round(n * sp.weight / 100))
        if revision == sp.canary:
            return canary
        return n - canary if n - canary >= 1 else (0 if sp.weight >= 100 else 1)

    def _deployment(self, revision: str, replicas: int) -> Json:
        w, lbl = self.workload, labels(self.system, self.owner.name, revision)
        env = [
            {"name": "MODSHIP_FLAGS_FILE", "value": f"{FLAGS_DIR}/flags.json"},
            {"name": "MODSHIP_SYSTEM", "value": self.system},
            {"name": "MODSHIP_REVISION", "value": revision},
            *({"name": k, "value": v} for k, v in sorted(w.env.items())),
        ]
        container: Json = {
            "name": "system",
            "image": w.image_for(revision),
            "ports": [{"name": "http", "containerPort": w.port, "protocol": "TCP"}],
            "env": env,
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
            "livenessProbe": {
                "httpGet": {"path": "/livez", "port": "http"},
                "periodSeconds": 10,
                "initialDelaySeconds": 10,
                "failureThreshold": 3,
            },
            "volumeMounts": [{"name": "flags", "mountPath": FLAGS_DIR, "readOnly": True}],
        }
        if w.resources:
            container["resources"] = w.resources
        pod: Json = {
            "containers": [container],
            "volumes": [{"name": "flags", "configMap": {"name": self._flags(revision), "optional": True}}],
        }
        if w.service_account:
            pod["serviceAccountName"] = w.service_account
        selector = {"modship.dev/system": self.system, "modship.dev/revision": revision}
        deadline = int(max(30, min(600, self.r.spec.policies.progress_deadline)))
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(deployment_name(self.system, revision), self.owner, lbl),
            "spec": {
                "replicas": replicas,
                "revisionHistoryLimit": 2,
                "progressDeadlineSeconds": deadline,
                "selector": {"matchLabels": selector},
                "template": {"metadata": {"labels": lbl}, "spec": pod},
            },
        }

    def _flags(self, revision: str) -> str:
        return flags_name(self.system, revision)

    def _configmap(self, revision: str, flags: Mapping[str, Any]) -> Json:
        meta = _meta(
            self._flags(revision),
            self.owner,
            labels(self.system, self.owner.name, revision),
            {TOGGLES_DIGEST: Applied.digest(self.toggles)},
        )
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"flags.json": json.dumps(flags)}}

    def _sync_toggles(self, revision: str) -> None:
        """Merge the system's toggles into a revision's flag file when they changed since it was
        written (flags set by rollout steps stay: a promoted revision keeps them)."""
        key = self._key(("", "toggles"), self._flags(revision))
        digest = Applied.digest(self.toggles)
        if self.shared.applied.fresh(key, digest):
            return
        cm = self.kube.get(CONFIGMAPS, self.ns, self._flags(revision))
        if cm is None or (cm["metadata"].get("annotations") or {}).get(TOGGLES_DIGEST) != digest:
            try:
                current = json.loads(((cm or {}).get("data") or {}).get("flags.json") or "{}")
            except ValueError:
                current = {}
            merged = {**(current if isinstance(current, dict) else {}), **self.toggles}
            self._apply(CONFIGMAPS, self._configmap(revision, merged))
        self.shared.applied.remember(key, digest)

    def _state(self, revision: str) -> DeploymentState | None:
        name = deployment_name(self.system, revision)
        known = self.shared.index.get(self.ns, name)
        if known is not None:
            return known
        key = f"{self.ns}/{name}"
        last = self.shared.reads.get(key)
        if last is not None and time.monotonic() - last < READ_EVERY:
            return None  # read moments ago: the watch will tell when it appears
        self.shared.reads[key] = time.monotonic()
        d = self.kube.get(DEPLOYMENTS, self.ns, name)
        if d is None:
            self.shared.applied.forget(self._key(DEPLOYMENTS, name))
            return None
        return deployment_state(d)

    def _pod_failure(self, revision: str) -> str | None:
        """Container states a Deployment does not surface (image pulls, crash loops); read at most
        every POD_CHECK_EVERY seconds per revision."""
        key = f"{self.ns}/{deployment_name(self.system, revision)}"
        last = self.shared.pod_checks.get(key)
        if last is not None and time.monotonic() - last[0] < POD_CHECK_EVERY:
            return last[1]
        selector = f"modship.dev/system={self.system},modship.dev/revision={revision}"
        found = None
        for pod in self.kube.items(PODS, self.ns, selector=selector):
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                waiting = (cs.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in _POD_FAILURES:
                    found = f"pod {pod['metadata']['name']}: {waiting['reason']}: {waiting.get('message', '')}".strip()
        self.shared.pod_checks[key] = (time.monotonic(), found)
        return found

    # -- services ---------------------------------------------------------------------------------
    def _services(self) -> None:
        sp = self.split
        if sp.stable is None:
            return
        stable, canary, root = service_names(self.system)
        for name, revision in ((stable, sp.stable), (canary, sp.canary or sp.stable), (root, None)):
            selector = {"modship.dev/system": self.system}
            if revision is not None:
                selector["modship.dev/revision"] = revision
            port = {"name": "http", "port": self.workload.port, "targetPort": "http", "protocol": "TCP"}
            body = {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": _meta(name, self.owner, labels(self.system, self.owner.name)),
                "spec": {"selector": selector, "ports": [port]},
            }
            self._apply(SERVICES, body)

    def _key(self, res: Resource, name: str) -> str:
        """What ``Applied`` remembers, per Rollout object (its uid: a recreated Rollout starts over)."""
        return f"{self.owner.uid}/{res[1]}/{name}"

    def _apply(self, res: Resource, body: Json) -> None:
        key = self._key(res, body["metadata"]["name"])
        digest = Applied.digest(body)
        if self.shared.applied.fresh(key, digest):
            return
        self.kube.apply(res, self.ns, body)
        self.shared.applied.remember(key, digest)

    # -- routers ----------------------------------------------------------------------------------
    def _unmapped(self, t: SetTraffic) -> None:
        """Policies of the local router that no cluster router here applies, said as conditions."""
        if t.canary and (t.sticky_header or t.sticky_cookie):
            key = t.sticky_header or f"cookie {t.sticky_cookie}"
            why = f"sticky assignment by {key} is not applied on Kubernetes: use your mesh's session affinity"
            self.notes["StickySessions"] = (False, "StickyUnsupported", why)
        if t.canary and t.fallback:
            why = ("failed canary requests are not retried on stable by the cluster's router (the local router "
                   "does): configure retries in your mesh; failures still count against the canary")  # fmt: skip
            self.notes["ZeroLossFallback"] = (False, "FallbackUnsupported", why)

    def _conditions(self, router: str) -> None:
        """What the split looks like through this router, as conditions: set every cycle (the same
        inputs give the same conditions, so the status does not flap)."""
        sp = self.split
        where = f"{sp.weight:g} % to canary {sp.canary}" if sp.canary else f"100 % to stable {sp.stable}"
        self.notes["TrafficRouting"] = (True, "Routed", f"{router}: {where}")
        if not sp.canary:
            return
        if sp.mirror:
            if router.startswith("Ingress"):
                self.notes["Mirroring"] = (False, "MirrorUnsupported", "NGINX Ingress cannot mirror: setMirror ignored")
            elif router.startswith("HTTPRoute") and not self._mirror_percent():
                why = f"the installed HTTPRoute CRD has no requestMirror.percent: {sp.mirror:g} % mirroring not applied"
                self.notes["Mirroring"] = (False, "MirrorPercentUnsupported", why)
            elif router == "replica ratios":
                self.notes["Mirroring"] = (
                    False,
                    "MirrorUnsupported",
                    "replica ratios cannot mirror: setMirror ignored",
                )
            else:
                self.notes["Mirroring"] = (
                    True,
                    "Mirroring",
                    f"{sp.mirror:g} % of stable's traffic mirrored to the canary",
                )
        if sp.header_route and router == "replica ratios":
            why = "header routes need spec.trafficRouting (gatewayAPI, istio or nginx): setHeaderRoute ignored"
            self.notes["TrafficRouting"] = (False, "UnsupportedWithReplicaRatios", why)

    def _user_object(self, res: Resource, name: str, wanted: Any) -> Json | None:
        """The router object to rewrite, or None when what we would write is already there."""
        if self.shared.applied.fresh(self._key(res, name), Applied.digest(wanted)):
            return None
        obj = self.kube.get(res, self.ns, name)
        if obj is None:
            raise Unavailable(f"{_KINDS[res]} {self.ns}/{name} named in spec.trafficRouting does not exist", delay=10)
        return obj

    def _gateway(self, name: str) -> None:
        self._conditions(f"HTTPRoute {name}")
        obj = self._user_object(HTTPROUTES, name, self.split)
        if obj is None:
            return
        rules = gateway_rules(
            (obj.get("spec") or {}).get("rules") or [],
            system=self.system,
            split=self.split,
            port=self.workload.port,
            mirror_percent=self._mirror_percent(),
        )
        if rules is None:
            why = f"HTTPRoute {self.ns}/{name} has no rule with a backendRef to Service {self.system}-stable"
            raise Unavailable(why, delay=10)
        self._rewrite(HTTPROUTES, name, {"rules": rules})

    def _istio(self, name: str) -> None:
        self._conditions(f"VirtualService {name}")
        obj = self._user_object(VIRTUALSERVICES, name, self.split)
        if obj is None:
            return
        http = istio_http((obj.get("spec") or {}).get("http") or [], system=self.system, split=self.split)
        if http is None:
            why = f"VirtualService {self.ns}/{name} has no http route to host {self.system}-stable"
            raise Unavailable(why, delay=10)
        self._rewrite(VIRTUALSERVICES, name, {"http": http})

    def _rewrite(self, res: Resource, name: str, spec: Json) -> None:
        gv, _ = res
        body = {"apiVersion": gv, "kind": _KINDS[res], "metadata": {"name": name, "namespace": self.ns}, "spec": spec}
        self.kube.apply(res, self.ns, body)
        self.shared.applied.remember(self._key(res, name), Applied.digest(self.split))

    def _nginx(self, ingress: str) -> None:
        self._conditions(f"Ingress {ingress}-canary")
        obj = self._user_object(INGRESSES, ingress, self.split)
        if obj is None:
            return
        self._apply(INGRESSES, nginx_canary(obj, system=self.system, split=self.split, owner=self.owner))
        self.shared.applied.remember(self._key(INGRESSES, ingress), Applied.digest(self.split))

    def _ratios(self) -> None:
        self._conditions("replica ratios")
        sp = self.split
        for revision, role in self._roles.items():
            if revision in (sp.stable, sp.canary):
                self._apply(DEPLOYMENTS, self._deployment(revision, self._replicas(revision, role)))

    def _mirror_percent(self) -> bool:
        if self.shared.mirror_percent is None:
            self.shared.mirror_percent = mirror_percent_supported(self.kube)
        return self.shared.mirror_percent


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


# -- rewriting routes (pure) ------------------------------------------------------------------------------


def _weights(w: float) -> tuple[int, int]:
    """Integer weights (Gateway API, Istio): percentages, or hundredths of one when fractional."""
    if float(w).is_integer():
        return 100 - int(w), int(w)
    return round((100 - w) * 100), round(w * 100)


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
            ws, wc = _weights(split.weight)
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
            ws, wc = _weights(split.weight)
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
        "metadata": _meta(name, owner, labels(system, owner.name), ann),
        "spec": out_spec,
    }


# -- deletion -------------------------------------------------------------------------------------------


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


# -- metrics ----------------------------------------------------------------------------------------------


class NoRouterSource:
    """The ``builtin`` provider on Kubernetes: there is no modship router to read telemetry from."""

    MESSAGE = (
        "builtin metrics come from the local modship router (modship up); on Kubernetes use provider "
        "prometheus (spec.prometheus or MODSHIP_PROMETHEUS_URL)"
    )

    def online(self) -> bool:
        return False

    def sample(self, check: Check, ctx: QueryContext) -> Sample:
        return Sample(value=None, error=self.MESSAGE)
