"""Governance on Kubernetes, read by the operator: the policy (the ConfigMap ``modship-policy`` of the
Rollout's namespace, key ``policy.yaml``), the change's author (the Rollout's ``modship.dev/author``
annotation, stamped by ``modship promote`` and checked by the chart's admission policy) and the
Approval objects of the canary's revision. Together they are the ``Release`` the state machine's
approval gate judges.
"""

from __future__ import annotations

import yaml

from controller.adapters.kube import api as k8s
from controller.adapters.kube.rollouts import AUTHOR, BREAK_GLASS
from controller.adapters.kube_rollouts import approvals_of
from controller.errors import ModshipError, SpecError
from controller.plan import governance as gov
from controller.plan.status import RolloutStatus
from controller.spec import policy as policy_spec
from controller.spec.modules import Stability
from controller.spec.policy import Policy

CONFIGMAP = "modship-policy"
KEY = "policy.yaml"
CONFIGMAPS: k8s.Resource = ("v1", "configmaps")


def policy(kube: k8s.Kube, namespace: str) -> Policy | None:
    """The namespace's policy; None without the ConfigMap (no rules: nothing waits for approval).
    A policy that does not parse is an error (the rollout holds), never "no rules"."""
    cm = kube.get(CONFIGMAPS, namespace, CONFIGMAP)
    if cm is None:
        return None
    text = (cm.get("data") or {}).get(KEY)
    try:
        if text is None:
            raise SpecError(f"no key {KEY}")
        return policy_spec.from_document(yaml.safe_load(text), source=f"ConfigMap {namespace}/{CONFIGMAP}")
    except (SpecError, yaml.YAMLError) as exc:
        raise ModshipError(f"the governance policy cannot be read, holding: {exc}") from None


def release(
    kube: k8s.Kube, namespace: str, name: str, annotations: dict[str, str], s: RolloutStatus
) -> gov.Release | None:
    """What governs the canary in flight. The registry is not read here, so the modules' tiers and
    owners are unknown: a system's own rule applies, else the ``stable`` tier's (the strictest)."""
    if not s.in_flight or s.canary is None:
        return None
    p = policy(kube, namespace)
    if p is None:
        return None
    change = gov.Change(
        revision=s.canary,
        author=annotations.get(AUTHOR, ""),
        at=s.started or 0.0,
        reason=annotations.get(BREAK_GLASS, ""),
        break_glass=BREAK_GLASS in annotations,
        tiers=(Stability.STABLE.value,),
    )
    return gov.release(p, name, change, tuple(approvals_of(kube, namespace, name, s.canary)))
