"""The pods of a system's in-cluster modship router, reached through the API server's pod proxy
(``/api/v1/namespaces/NS/pods/NAME:PORT/proxy/...``): the operator configures each router pod and
reads its telemetry whether it runs in the cluster or beside it, under the API server's
authentication and RBAC (``pods/proxy``), and never needs the pods' addresses.

Each router asks for the namespace's admin token (Secret ``modship-router-token``, created once by
the operator; see ``controller.adapters.router.admin``). A router pod is configured as soon as it
runs, before it is Ready: its readiness (``/-/modship/readyz``) waits for a configuration, so the
Service never sends a client to a router that does not know where to route.

Also here: ``RouterPodsSource``, the ``builtin`` metrics provider over those pods (their telemetry
merged: each replica saw its own requests).
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from typing import Any

from controller.adapters.kube.api import PODS, SECRETS, Json, Kube, KubeUnavailable
from controller.errors import ModshipError, NotFound, SpecError, Unavailable
from controller.plan import router_telemetry
from controller.plan.observations import QueryContext, Sample
from controller.spec.rollout import Check

TOKEN_SECRET = "modship-router-token"
TOKEN_KEY = "token"
TOKEN_HEADER = "x-modship-token"
COMPONENT = "modship.dev/component"
LIST_EVERY = 1.0  # the router pods of a system are listed at most this often


def selector_labels(system: str) -> dict[str, str]:
    return {"modship.dev/system": system, COMPONENT: "router"}


class Tokens:
    """The router admin token of each namespace: read (or created) once per process."""

    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, kube: Kube, ns: str, *, create: bool = False) -> str | None:
        with self._lock:
            known = self._tokens.get(ns)
        if known is not None:
            return known
        obj = kube.get(SECRETS, ns, TOKEN_SECRET)
        if obj is None and create:
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": TOKEN_SECRET,
                    "namespace": ns,
                    "labels": {"app.kubernetes.io/managed-by": "modship", COMPONENT: "router"},
                },
                "type": "Opaque",
                "data": {TOKEN_KEY: base64.b64encode(secrets.token_urlsafe(32).encode()).decode()},
            }
            try:
                obj = kube.create(SECRETS, ns, body)
            except KubeUnavailable as exc:
                if exc.reason != "AlreadyExists":  # another operator replica made it first: read theirs
                    raise
                obj = kube.get(SECRETS, ns, TOKEN_SECRET)
        raw = ((obj or {}).get("data") or {}).get(TOKEN_KEY)
        if not raw:
            return None
        token = base64.b64decode(raw).decode().strip()
        with self._lock:
            self._tokens[ns] = token
        return token


TOKENS = Tokens()  # one per process: the operator's


class RouterPods:
    """Admin access to the router pods of one system in one namespace."""

    def __init__(self, kube: Kube, ns: str, system: str, port: int, token: str | None) -> None:
        self.kube, self.ns, self.system, self.port, self.token = kube, ns, system, port, token
        self._listed: tuple[float, list[Json]] | None = None

    def running(self) -> list[Json]:
        """Router pods that run and have an address (Ready or not), not being deleted."""
        if self._listed is not None and time.monotonic() - self._listed[0] < LIST_EVERY:
            return self._listed[1]
        selector = ",".join(f"{k}={v}" for k, v in selector_labels(self.system).items())
        pods = [
            p
            for p in self.kube.items(PODS, self.ns, selector=selector)
            if (p.get("status") or {}).get("phase") == "Running"
            and (p.get("status") or {}).get("podIP")
            and not p["metadata"].get("deletionTimestamp")
        ]
        self._listed = (time.monotonic(), pods)
        return pods

    def forget(self) -> None:
        self._listed = None

    def call(
        self, pod: str, method: str, path: str, *, body: Any = None, query: tuple[tuple[str, str], ...] = ()
    ) -> Json:
        """One admin request to ``pod``; raises Unavailable (unreachable, refused) or NotFound."""
        url = f"/api/v1/namespaces/{self.ns}/pods/{pod}:{self.port}/proxy{path}"
        headers = {TOKEN_HEADER: self.token} if self.token else {}
        ctype = "application/json" if body is not None else None
        try:
            return self.kube.request(method, url, body=body, query=query, content_type=ctype, headers=headers)
        except SpecError as exc:  # a 4xx from the router itself: it refused what we sent
            raise Unavailable(f"router pod {self.ns}/{pod} refused {method} {path}: {exc}") from exc


class RouterPodsSource:
    """The ``builtin`` metrics provider on Kubernetes with ``trafficRouting.modship``: the telemetry
    of every running router pod of the system, merged."""

    def __init__(self, pods: RouterPods) -> None:
        self.pods = pods

    def online(self) -> bool:
        try:
            return bool(self.pods.running())
        except ModshipError:
            return False

    def _snapshot(self, window_s: float) -> dict[str, Any]:
        snaps, errors = [], []
        for pod in self.pods.running():
            name = pod["metadata"]["name"]
            try:
                snaps.append(self.pods.call(name, "GET", "/-/modship/telemetry", query=(("window", f"{window_s:g}"),)))
            except (Unavailable, NotFound) as exc:
                errors.append(f"{name}: {exc}")
        if errors:  # a router that cannot be read may hold the failing requests: no figure without it
            raise ValueError("router telemetry incomplete (" + "; ".join(errors) + ")")
        return router_telemetry.merge(snaps)

    def sample(self, check: Check, ctx: QueryContext) -> Sample:
        router_telemetry.metric_of(check)
        try:
            snapshot = self._snapshot(ctx.window_s)
        except (ModshipError, ValueError, KeyError, TypeError) as exc:
            return Sample(value=None, error=f"router telemetry of {self.pods.system} unusable: {exc}")
        return router_telemetry.to_sample(snapshot, check, ctx)
