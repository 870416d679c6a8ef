"""The Target port on Kubernetes: a Deployment and a flag ConfigMap per revision, the system's
Services, and the traffic split through the Rollout's ``TrafficRouter`` (see ``traffic``).

The feature-flag file the workload reads through ``MODSHIP_FLAGS_FILE`` is ConfigMap ``S-R-flags``.
Services ``S-stable`` and ``S-canary`` select a revision (canary selects stable while nothing is in
flight); they exist where a mesh routes to them or with ``workload.roleServices`` (every Service
costs kube-controller-manager work on each pod change in its namespace). ``S`` selects every
revision (traffic in replica-ratio mode), or, with ``trafficRouting.modship``, the router pods
(``modship_router``). Policies of the local router no mesh here applies (sticky assignment,
zero-loss fallback) become conditions in ``notes``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from controller.adapters.kube import ratios
from controller.adapters.kube.api import CONFIGMAPS, DEPLOYMENTS, PODS, SERVICES, Json, Resource
from controller.adapters.kube.caches import Applied, DeploymentState, Shared, deployment_state
from controller.adapters.kube.gateway import GatewayRouter
from controller.adapters.kube.istio import IstioRouter
from controller.adapters.kube.modship_router import ModshipRouter, revision_service
from controller.adapters.kube.names import Owner, deployment_name, flags_name, labels, meta, service_names
from controller.adapters.kube.nginx import NginxRouter
from controller.adapters.kube.ratios import ReplicaRatios
from controller.adapters.kube.router_pods import selector_labels as router_selector
from controller.adapters.kube.traffic import Context, Split, TrafficRouter
from controller.adapters.kube.traffic import conditions as traffic_conditions
from controller.adapters.malloc import MALLOC_ENV
from controller.errors import SpecError
from controller.plan.actions import SetTraffic
from controller.plan.observations import Health
from controller.plan.status import RolloutStatus
from controller.spec.rollout import Rollout, TrafficRouting, Workload

FLAGS_DIR = "/etc/modship/flags"
TOGGLES_DIGEST = "modship.dev/toggles-digest"
_POD_FAILURES = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError", "CrashLoopBackOff"}
)
POD_CHECK_EVERY = 10.0
READ_EVERY = 5.0  # a Deployment the watch has not shown is read directly at most this often


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
        self.ctx = Context(shared, owner, self.system, self.workload.port)
        self.router = router_for(self.routing, self.ctx, redeploy=self._redeploy)

    # -- Target port ----------------------------------------------------------------------------
    def ensure(self, revision: str, role: str) -> None:
        self._roles[revision] = role
        if role != "canary":  # the canary's flag file is written whole by ``flags`` in the same cycle
            self._sync_toggles(revision)
        self._apply(DEPLOYMENTS, self._deployment(revision, self._replicas(revision, role)))

    def stop(self, revision: str) -> None:
        objects = [(DEPLOYMENTS, deployment_name(self.system, revision)), (CONFIGMAPS, self._flags(revision))]
        if self.routing.modship is not None:
            objects.append((SERVICES, revision_service(self.system, revision)))
        for res, name in objects:
            self.kube.delete(res, self.ns, name)
            self.shared.applied.forget(self._key(res, name))
        self.shared.applied.forget(self._key(("", "toggles"), self._flags(revision)))
        self.shared.index.drop(self.ns, deployment_name(self.system, revision))

    def route(self, traffic: SetTraffic) -> None:
        t = traffic
        self.split = Split(
            t.stable, t.canary, t.weight, t.header_route, t.mirror, t.fallback, t.sticky_header, t.sticky_cookie
        )
        if self.routing.modship is None:
            self._unmapped(traffic)
        self._services()
        self.notes.update(traffic_conditions(self.router, self.split))
        self.router.route(self.split)

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
        return ratios.replicas(n, self.split, revision, role)

    def _redeploy(self) -> None:
        """Replica ratios: every revision of this cycle with its share of the replicas under the
        new split (a promoted rollout's previous stable drops to zero in the same cycle: the root
        Service would send it traffic, and with one replica no readiness change wakes us later)."""
        for revision, role in self._roles.items():
            self._apply(DEPLOYMENTS, self._deployment(revision, self._replicas(revision, role)))

    def _deployment(self, revision: str, replicas: int) -> Json:
        w, lbl = self.workload, labels(self.system, self.owner.name, revision)
        env = [
            {"name": "MODSHIP_FLAGS_FILE", "value": f"{FLAGS_DIR}/flags.json"},
            {"name": "MODSHIP_SYSTEM", "value": self.system},
            {"name": "MODSHIP_REVISION", "value": revision},
            *({"name": k, "value": v} for k, v in sorted({**MALLOC_ENV, **w.env}.items())),
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
            "metadata": meta(deployment_name(self.system, revision), self.owner, lbl),
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
        md = meta(
            self._flags(revision),
            self.owner,
            labels(self.system, self.owner.name, revision),
            {TOGGLES_DIGEST: Applied.digest(self.toggles)},
        )
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": md, "data": {"flags.json": json.dumps(flags)}}

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
        services: list[tuple[str, str | None]] = [(root, None)]
        if self.routing.routes_to_role_services or self.workload.role_services:
            services += [(stable, sp.stable), (canary, sp.canary or sp.stable)]
        for name, revision in services:
            selector = {"modship.dev/system": self.system}
            if revision is not None:
                selector["modship.dev/revision"] = revision
            elif self.routing.modship is not None:  # S: the router pods
                selector = router_selector(self.system)
            port = {"name": "http", "port": self.workload.port, "targetPort": "http", "protocol": "TCP"}
            body = {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": meta(name, self.owner, labels(self.system, self.owner.name)),
                "spec": {"selector": selector, "ports": [port]},
            }
            self._apply(SERVICES, body)

    def _key(self, res: Resource, name: str) -> str:
        return self.ctx.key(res, name)

    def _apply(self, res: Resource, body: Json) -> None:
        self.ctx.apply(res, body)

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


def router_for(routing: TrafficRouting, ctx: Context, *, redeploy: Callable[[], None]) -> TrafficRouter:
    """The Rollout's TrafficRouter: the mesh its ``trafficRouting`` names, else replica ratios."""
    if routing.gateway_api is not None:
        return GatewayRouter(ctx, routing.gateway_api.http_route)
    if routing.istio is not None:
        return IstioRouter(ctx, routing.istio.virtual_service)
    if routing.nginx is not None:
        return NginxRouter(ctx, routing.nginx.ingress)
    if routing.modship is not None:
        return ModshipRouter(ctx, routing.modship)
    return ReplicaRatios(redeploy)
