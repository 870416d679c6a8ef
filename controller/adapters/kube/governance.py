"""Governance on Kubernetes, read by the operator: the policy (the ConfigMap ``modship-policy`` of the
Rollout's namespace, key ``policy.yaml``), the change's author (the Rollout's ``modship.dev/author``
annotation, stamped by ``modship promote`` and checked by the chart's admission policy) and the
Approval objects of the canary's revision. Together they are the ``Release`` the state machine's
approval gate judges.
"""

from __future__ import annotations

import json

import yaml

from controller.adapters.kube import api as k8s
from controller.adapters.kube.rollouts import AUTHOR, BREAK_GLASS
from controller.adapters.kube_rollouts import LAST_REQUEST, approvals_of
from controller.errors import ModshipError, SpecError
from controller.plan import governance as gov
from controller.plan.status import RolloutStatus
from controller.spec import policy as policy_spec
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


def change(annotations: dict[str, str], revision: str, at: float, facts: gov.ModuleFacts = gov.UNKNOWN) -> gov.Change:
    """The change a Rollout's spec asks for: its author is the ``modship.dev/author`` annotation (the
    chart's admission policy makes it the user who set ``spec.revision``, or leaves it out), its
    reason the break-glass annotation's, else that of the author's last ``modship promote``; the
    tiers and owners of the modules it moves ``facts`` (read from the registry by the operator)."""
    author = annotations.get(AUTHOR, "")
    reason = annotations.get(BREAK_GLASS, "")
    if not reason:
        try:
            asked = json.loads(annotations.get(LAST_REQUEST) or "{}")
        except ValueError:
            asked = {}
        if isinstance(asked, dict) and asked.get("what") == "promote" and asked.get("user") == author:
            reason = str(asked.get("reason") or "")
    return gov.Change(
        revision=revision,
        author=author,
        at=at,
        reason=reason,
        break_glass=BREAK_GLASS in annotations,
        tiers=facts.tiers,
        owners=dict(facts.owners),
    )


def admission(
    kube: k8s.Kube, namespace: str, name: str, *, annotations: dict[str, str], target: str | None,
    s: RolloutStatus, now: float, facts: gov.ModuleFacts = gov.UNKNOWN,
) -> gov.Refusal | None:  # fmt: skip
    """May the operator start the new canary the spec asks for (None: yes, or nothing new)?"""
    if target is None or not gov.is_new_change(target, s):
        return None
    return gov.admission(policy(kube, namespace), name, change(annotations, target, now, facts), s, now)


def release(
    kube: k8s.Kube,
    namespace: str,
    name: str,
    annotations: dict[str, str],
    s: RolloutStatus,
    *,
    target: str | None = None,
    facts: gov.ModuleFacts = gov.UNKNOWN,
) -> gov.Release | None:
    """What governs the canary in flight. ``facts``: its modules' tiers and owners (unknown without
    a registry: a system's own rule applies, else the ``stable`` tier's, the strictest). While the
    spec names another ``target`` (one the policy refused), the author and break-glass annotations
    are that target's: the canary's author is then unknown and its glass unbroken."""
    if not s.in_flight or s.canary is None:
        return None
    p = policy(kube, namespace)
    if p is None:
        return None
    if target is not None and target != s.canary:
        annotations = {k: v for k, v in annotations.items() if k not in (AUTHOR, BREAK_GLASS, LAST_REQUEST)}
    c = change(annotations, s.canary, s.started or 0.0, facts)
    return gov.release(p, name, c, tuple(approvals_of(kube, namespace, name, s.canary)))
