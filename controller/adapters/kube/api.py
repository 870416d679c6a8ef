"""The Kubernetes API as raw JSON over ``kubernetes.client.ApiClient``, with one choke point for
errors: ``Kube.request`` turns API errors into modship errors (conflicts, timeouts, throttling and
5xx -> Unavailable; 400/422 -> SpecError; 404 -> NotFound). Writes are server-side apply with one
field manager; ``force`` only after a conflict, when another manager owns a field we must set, and
logged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import orjson
import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from controller.errors import Conflict, ModshipError, NotFound, SpecError, Unavailable

log = logging.getLogger("modship.kubernetes")

FIELD_MANAGER = "modship"
GROUP_VERSION = "modship.dev/v1alpha1"

Json = dict[str, Any]
Resource = tuple[str, str]  # (group/version, plural)
DEPLOYMENTS: Resource = ("apps/v1", "deployments")
SERVICES: Resource = ("v1", "services")
CONFIGMAPS: Resource = ("v1", "configmaps")
PODS: Resource = ("v1", "pods")
SECRETS: Resource = ("v1", "secrets")
EVENTS: Resource = ("v1", "events")
INGRESSES: Resource = ("networking.k8s.io/v1", "ingresses")
HTTPROUTES: Resource = ("gateway.networking.k8s.io/v1", "httproutes")
VIRTUALSERVICES: Resource = ("networking.istio.io/v1", "virtualservices")
APPROVALS: Resource = (GROUP_VERSION, "approvals")
ROLLOUTS: Resource = (GROUP_VERSION, "rollouts")
LEASES: Resource = ("coordination.k8s.io/v1", "leases")
CRDS: Resource = ("apiextensions.k8s.io/v1", "customresourcedefinitions")
KINDS = {
    DEPLOYMENTS: "Deployment",
    SERVICES: "Service",
    CONFIGMAPS: "ConfigMap",
    INGRESSES: "Ingress",
    HTTPROUTES: "HTTPRoute",
    VIRTUALSERVICES: "VirtualService",
}


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
        headers: dict[str, str] | None = None,
    ) -> Json:
        """One request; the JSON answer. Raises NotFound, SpecError, Conflict (field-manager
        conflicts of server-side apply only) or Unavailable (everything a retry may fix).
        ``headers``: more request headers (for a pod behind the API server's proxy)."""
        headers = {"Accept": "application/json", **(headers or {})}
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
