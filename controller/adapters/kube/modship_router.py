"""The TrafficRouter for ``spec.trafficRouting.modship``: modship's own router in the cluster.

    clients ─▶ Service S ─▶ Deployment S-router (modship router pods) ─┬─▶ Service S-<stable revision>
                                                                      └─▶ Service S-<canary revision>

The operator keeps Deployment ``S-router`` (the operator's image unless the spec names one; non-root,
read-only root filesystem, no service-account token) and configures every running router pod with
the same document the local runtime sends its router (``controller.plan.router_config``), through
the API server's pod proxy (``router_pods``). So sticky assignment, header routes, mirroring with
answer comparison and zero-loss fallback work as on one machine, and the routers' telemetry serves
the ``builtin`` checks. A split counts as applied only when every running router pod has it, and
one that sends the canary requests only once every router reaches the canary (a router holds a new
canary back until a connection to it opens): until then ``route`` raises Unavailable and the
rollout does not move on.
"""

from __future__ import annotations

import os

from controller.adapters.kube.api import DEPLOYMENTS, SERVICES, Json
from controller.adapters.kube.names import deployment_name, labels, meta
from controller.adapters.kube.router_pods import COMPONENT, TOKEN_KEY, TOKEN_SECRET, TOKENS, RouterPods, selector_labels
from controller.adapters.kube.traffic import Context, Notes, Split, mirroring
from controller.errors import NotFound, SpecError, Unavailable
from controller.plan import router_config
from controller.plan.actions import SetTraffic
from controller.spec.rollout import ModshipRouting

STATE_DIR = "/var/run/modship"
IMAGE_ENV = "MODSHIP_ROUTER_IMAGE"  # the chart sets it to the operator's own image


def router_name(system: str) -> str:
    return f"{system}-router"


def revision_service(system: str, revision: str) -> str:
    """The Service of exactly one revision (the router's upstream): named like its Deployment."""
    return deployment_name(system, revision)


def image_for(spec: ModshipRouting) -> str:
    image = spec.image or os.environ.get(IMAGE_ENV, "")
    if not image:
        raise SpecError(
            f"spec.trafficRouting.modship.image is not set and the operator has no {IMAGE_ENV}",
            field="spec.trafficRouting.modship.image",
        )
    return image


class ModshipRouter:
    """Deployment ``S-router`` and the configuration of its pods."""

    label = "modship router"

    def __init__(self, ctx: Context, spec: ModshipRouting) -> None:
        self.ctx, self.spec = ctx, spec
        self.image = image_for(spec)

    def notes(self, split: Split) -> Notes:
        return mirroring(split) if split.mirror > 0 else {}

    # -- objects ----------------------------------------------------------------------------------
    def deployment(self) -> Json:
        system, spec = self.ctx.system, self.spec
        lbl = {**labels(system, self.ctx.owner.name), COMPONENT: "router"}
        args = ["--host", "0.0.0.0", "--port", str(spec.port), "--system", system]
        container: Json = {
            "name": "router",
            "image": self.image,
            "command": ["python", "-m", "controller.entrypoints.router"],
            "args": [*args, "--state", f"{STATE_DIR}/router.json"],
            "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
            "env": [
                {
                    "name": "MODSHIP_ROUTER_TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": TOKEN_SECRET, "key": TOKEN_KEY}},
                }
            ],
            # ready once configured: a new router pod gets no client before it knows where to route
            "readinessProbe": {"httpGet": {"path": "/-/modship/readyz", "port": "http"}, "periodSeconds": 1},
            "livenessProbe": {"httpGet": {"path": "/-/modship/livez", "port": "http"}, "periodSeconds": 10},
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [{"name": "state", "mountPath": STATE_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
        }
        if spec.resources:
            container["resources"] = spec.resources
        pod: Json = {
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "terminationGracePeriodSeconds": 30,
            "containers": [container],
            # the last configuration outlives a restart of the container (not of the pod)
            "volumes": [{"name": "state", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
        }
        if spec.node_selector:
            pod["nodeSelector"] = dict(spec.node_selector)
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(router_name(system), self.ctx.owner, lbl),
            "spec": {
                "replicas": spec.replicas,
                "revisionHistoryLimit": 2,
                "selector": {"matchLabels": selector_labels(system)},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {"metadata": {"labels": lbl}, "spec": pod},
            },
        }

    def revision_service(self, revision: str) -> Json:
        system = self.ctx.system
        port = {"name": "http", "port": self.ctx.port, "targetPort": "http", "protocol": "TCP"}
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(revision_service(system, revision), self.ctx.owner, labels(system, self.ctx.owner.name)),
            "spec": {"selector": {"modship.dev/system": system, "modship.dev/revision": revision}, "ports": [port]},
        }

    def url(self, revision: str) -> str:
        return f"http://{revision_service(self.ctx.system, revision)}.{self.ctx.ns}.svc:{self.ctx.port}"

    # -- TrafficRouter ----------------------------------------------------------------------------
    def route(self, split: Split) -> None:
        if split.stable is None:
            return
        kube, ns = self.ctx.kube, self.ctx.ns
        token = TOKENS.get(kube, ns, create=True)
        for revision in (split.stable, split.canary):
            if revision is not None:
                self.ctx.apply(SERVICES, self.revision_service(revision))
        self.ctx.apply(DEPLOYMENTS, self.deployment())
        traffic = SetTraffic(
            split.stable,
            split.canary,
            split.weight,
            header_route=split.header_route,
            mirror=split.mirror,
            fallback=split.fallback,
            sticky_header=split.sticky_header,
            sticky_cookie=split.sticky_cookie,
        )
        want = router_config.wanted(
            self.ctx.system,
            traffic,
            stable_url=self.url(split.stable),
            canary_url=self.url(split.canary) if split.canary else None,
        )
        self.configure(RouterPods(kube, ns, self.ctx.system, self.spec.port, token), want)

    def configure(self, pods: RouterPods, want: Json) -> None:
        """Give every running router pod ``want``; Unavailable until all have it."""
        running = pods.running()
        if not running:
            raise Unavailable(f"no pod of Deployment {self.ctx.ns}/{router_name(self.ctx.system)} runs yet", delay=1)
        digest = self.ctx.shared.applied.digest(want)
        failed, warming = [], []
        sends = router_config.sends_to_canary(want)
        for pod in running:
            name, uid = pod["metadata"]["name"], pod["metadata"].get("uid", "")
            key = f"{self.ctx.owner.uid}/router-pod/{name}/{uid}"
            if self.ctx.shared.applied.fresh(key, digest):
                continue
            try:
                try:
                    current = pods.call(name, "GET", "/-/modship/config")
                except NotFound:
                    current = None
                if not router_config.same(current, want):
                    generation = int((current or {}).get("generation", 0)) + 1
                    current = pods.call(name, "PUT", "/-/modship/config", body={**want, "generation": generation})
            except Unavailable as exc:
                failed.append(f"{name}: {exc}")
                continue
            if sends and (current or {}).get("canaryWarming"):  # the split is not in force yet
                warming.append(name)
                continue
            self.ctx.shared.applied.remember(key, digest)
        if failed:
            pods.forget()
            raise Unavailable("router pods not configured yet: " + "; ".join(failed), delay=1)
        if warming:
            raise Unavailable(f"the canary is not reachable from router pods {', '.join(warming)} yet", delay=0.25)
