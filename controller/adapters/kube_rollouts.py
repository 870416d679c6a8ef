"""Rollout resources on Kubernetes for the control plane (``ports.RolloutResources``): read a
Rollout with its status, and write people's requests into it as one merge patch.

Commands are annotations holding the unix time they were given (``modship.dev/abort`` ...), which
the operator consumes once; the target and the pause switch are ``spec`` fields. The request that
made a patch (who, as the API server authenticated the caller, and why) is the annotation
``modship.dev/last-request``.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from controller import ports
from controller.adapters.kube import api as k8s
from controller.adapters.kube.rollouts import AUTHOR, BREAK_GLASS, CONTROLS, TOGGLES, entry_of
from controller.errors import Forbidden, NotFound, SpecError
from controller.plan.governance import Approval
from controller.spec import control
from controller.spec.policy import Policy

LAST_REQUEST = "modship.dev/last-request"


class KubeRollouts:
    def __init__(
        self, *, kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None
    ) -> None:
        api, default_ns = k8s.connect(kubeconfig, context, pool=2)
        self.kube = k8s.Kube(api, field_manager="modship-cli")
        self.namespace = namespace or default_ns
        self._user: str | None = None

    def close(self) -> None:
        api: Any = self.kube.api
        api.close()

    def records(self) -> list[ports.RolloutRecord]:
        return sorted((_record(o) for o in self.kube.items(k8s.ROLLOUTS, self.namespace)), key=lambda x: x.name)

    def read(self, name: str) -> ports.RolloutRecord:
        return _record(self._get(name))

    def live(self, name: str) -> dict[str, Any]:
        """The Rollout as the API server returns it (to compare with Git field by field)."""
        return self._get(name)

    def write(
        self,
        name: str,
        *,
        target: tuple[str, list[str]] | None = None,
        paused: bool | None = None,
        commands: dict[str, float] | None = None,
        toggles: dict[str, dict[str, Any]] | None = None,
        request: dict[str, Any] | None = None,
        break_glass: str | None = None,
    ) -> None:
        spec: dict[str, Any] = {}
        stamp: dict[str, str | None] = {}
        if target is not None:
            spec.update(revision=target[0], modules=target[1])
            stamp = {AUTHOR: self.user(), BREAK_GLASS: break_glass}  # None deletes a break-glass left over
        if paused is not None:
            spec["paused"] = paused
        annotations = {CONTROLS[k]: f"{at:.6f}" for k, at in (commands or {}).items()}
        if toggles is not None:
            annotations[TOGGLES] = json.dumps(toggles, sort_keys=True)
        if request is not None:
            annotations[LAST_REQUEST] = json.dumps(request, sort_keys=True)
        body: dict[str, Any] = {}
        if spec:
            body["spec"] = spec
        if annotations or stamp:
            body["metadata"] = {"annotations": {**annotations, **stamp}}
        self._get(name)
        self.kube.merge(k8s.ROLLOUTS, self.namespace, name, body)

    def user(self) -> str:
        """The caller's user name as the API server authenticated it (a SelfSubjectReview)."""
        if self._user is None:
            review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
            url = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
            done = self.kube.request("POST", url, body=review, content_type="application/json")
            self._user = str(((done.get("status") or {}).get("userInfo") or {}).get("username") or "unknown")
        return self._user

    def decide(self, name: str, *, revision: str, approve: bool, reason: str | None) -> str:
        """An Approval object naming the caller as approver: the API server's admission policy
        (charts/modship/templates/governance.yaml) refuses one that names anybody else."""
        self._get(name)
        user = self.user()
        body = approval_object(name, revision, user=user, approve=approve, reason=reason)
        try:
            self.kube.create(k8s.APPROVALS, self.namespace, body)
        except k8s.KubeUnavailable as exc:
            if exc.status == 403:
                raise Forbidden(f"{name}: the API server refused the approval: {exc}") from None
            raise
        return user

    def approvals(self, name: str, revision: str) -> list[Approval]:
        return approvals_of(self.kube, self.namespace, name, revision)

    def policy(self) -> Policy | None:
        from controller.adapters.kube import governance

        return governance.policy(self.kube, self.namespace)

    def events(self, name: str, *, limit: int = 200) -> list[control.EventRow]:
        obj = self._get(name)
        selector = f"involvedObject.uid={obj['metadata']['uid']}"
        url = k8s.path(k8s.EVENTS, self.namespace)
        items = self.kube.request("GET", url, query=[("fieldSelector", selector)]).get("items") or []
        rows = []
        for ev in items:
            stamp = ev.get("eventTime") or ev.get("lastTimestamp") or ev["metadata"].get("creationTimestamp")
            rows.append(
                control.EventRow(
                    at=_unix(stamp),
                    reason=ev.get("reason", ""),
                    message=ev.get("message", ""),
                    warning=ev.get("type") == "Warning",
                )
            )
        return sorted(rows, key=lambda x: x.at)[-limit:]

    def _get(self, name: str) -> dict[str, Any]:
        obj = self.kube.get(k8s.ROLLOUTS, self.namespace, name)
        if obj is None:
            raise NotFound(f"system {name!r} has no Rollout in namespace {self.namespace}")
        return obj


def _record(obj: dict[str, Any]) -> ports.RolloutRecord:
    e = entry_of(obj, trusted=True)
    try:
        r = e.rollout()
    except SpecError:
        r = None
    assert e.status is not None
    s = e.status
    st, spec = obj.get("status") or {}, obj.get("spec") or {}
    return ports.RolloutRecord(
        name=e.name,
        rollout=r,
        status=s,
        target=spec.get("revision"),
        modules=list(spec.get("modules") or []),
        paused=bool(spec.get("paused", False)),
        toggles=entry_of(obj, trusted=False).toggles,
        managed=int(st.get("observedGeneration") or 0) == int(obj["metadata"].get("generation") or 0),
        shown=(st.get("phase") or s.phase.value, st.get("reason", s.reason.value), st.get("message", s.message)),
        conditions=list(st.get("conditions") or []),
    )


def _unix(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


ROLLOUT_LABEL = "modship.dev/rollout"
REVISION_LABEL = "modship.dev/revision"


def approval_object(name: str, revision: str, *, user: str, approve: bool, reason: str | None) -> dict[str, Any]:
    return {
        "apiVersion": k8s.GROUP_VERSION,
        "kind": "Approval",
        "metadata": {"generateName": f"{name}-", "labels": {ROLLOUT_LABEL: name, REVISION_LABEL: revision}},
        "spec": {
            "rollout": name,
            "revision": revision,
            "approver": user,
            "decision": "approve" if approve else "reject",
            "reason": reason or "",
        },
    }


def approvals_of(kube: k8s.Kube, namespace: str, name: str, revision: str) -> list[Approval]:
    """Decisions on ``revision`` of Rollout ``name``, oldest first. ``spec.approver`` is the API
    server's word (admission refuses any other); the creation time is the API server's too."""
    selector = f"{ROLLOUT_LABEL}={name},{REVISION_LABEL}={revision}"
    out = []
    for o in kube.items(k8s.APPROVALS, namespace, selector=selector):
        spec = o.get("spec") or {}
        if spec.get("rollout") != name or spec.get("revision") != revision:
            continue  # labels are not the record: the spec is
        at = dt.datetime.fromisoformat(str(o["metadata"]["creationTimestamp"]).replace("Z", "+00:00")).timestamp()
        out.append(Approval(str(spec.get("approver")), spec.get("decision") == "approve", at, spec.get("reason") or ""))
    return sorted(out, key=lambda a: a.at)
