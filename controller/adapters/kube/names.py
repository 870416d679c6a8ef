"""Names, labels and ownership of what modship creates for a Rollout.

Per revision ``R`` of system ``S``: Deployment ``S-R`` and ConfigMap ``S-R-flags``. Per system:
Services ``S-stable``, ``S-canary`` and ``S``. Everything carries modship's labels and an owner
reference to the Rollout, so it is garbage-collected with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.adapters.kube.api import GROUP_VERSION, Json

MANAGED_BY = {"app.kubernetes.io/managed-by": "modship"}


def deployment_name(system: str, revision: str) -> str:
    return f"{system}-{revision}"


def flags_name(system: str, revision: str) -> str:
    return f"{system}-{revision}-flags"


def service_names(system: str) -> tuple[str, str, str]:
    """(stable, canary, root)."""
    return f"{system}-stable", f"{system}-canary", system


def service_url(system: str, namespace: str, port: int) -> str:
    """The in-cluster address of Service ``S``, which selects every revision's pods."""
    return f"http://{system}.{namespace}.svc:{port}"


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


def meta(name: str, owner: Owner, lbls: dict[str, str], annotations: dict[str, str] | None = None) -> Json:
    meta: Json = {"name": name, "namespace": owner.namespace, "labels": lbls, "ownerReferences": [owner.reference()]}
    if annotations:
        meta["annotations"] = annotations
    return meta
