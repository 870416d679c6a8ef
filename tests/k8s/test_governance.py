"""Approvals on the real control plane cannot be forged: two users (the static-token test user and
the admin), the chart's Approval CRD and its ValidatingAdmissionPolicy, RBAC letting the test user
create Approvals. The API server itself refuses an Approval naming anyone but its creator, even
from system:masters, and any change to a decision; modship's own adapter records the caller's
decision under the name the API server authenticated."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.adapters.kube_rollouts import KubeRollouts, approval_object, approvals_of
from controller.errors import Forbidden
from tests.k8s.operator_support import poll, rev, rollout_doc
from tests.support.k8senv import ADMIN_USER, TEST_USER, ControlPlane

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

CHART = Path(__file__).resolve().parents[2] / "charts" / "modship"
CRDS = [CHART / "crds" / "rollouts.modship.dev.yaml", CHART / "crds" / "approvals.modship.dev.yaml"]
SYSTEM = "topic"
REVISION = rev(7)


@dataclass(frozen=True)
class Plane:
    cp: ControlPlane
    ns: str

    def create(self, doc: dict[str, Any], *, as_admin: bool) -> subprocess.CompletedProcess[str]:
        """``kubectl create`` as the admin or the test user (not raising: refusals are the point)."""
        kubeconfig = None if as_admin else self.cp.user_kubeconfig
        return self.cp.kubectl(
            "create", "-n", self.ns, "-o", "json", "-f", "-", kubeconfig=kubeconfig, input=json.dumps(doc), check=False
        )


def _forged(approver: str) -> dict[str, Any]:
    return approval_object(SYSTEM, REVISION, user=approver, approve=True, reason="looks fine")


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> Iterator[Plane]:
    cp = control_plane
    cp.kubectl("apply", "--server-side", "--force-conflicts", *(f"-f={f}" for f in CRDS))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/rollouts.modship.dev",
               "crd/approvals.modship.dev")  # fmt: skip
    policy = cp.helm("template", "modship", str(CHART), "--show-only", "templates/governance.yaml").stdout
    cp.kubectl("apply", "--server-side", "--field-manager=modship-test", "-f", "-", input=policy)
    ns = f"gov-{uuid.uuid4().hex[:6]}"
    cp.kubectl("create", "namespace", ns)
    rbac = [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "approver", "namespace": ns},
         "rules": [{"apiGroups": ["modship.dev"], "resources": ["approvals"],
                    "verbs": ["create", "get", "list", "update", "patch"]},
                   {"apiGroups": ["modship.dev"], "resources": ["rollouts"], "verbs": ["get", "list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "approver", "namespace": ns},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "approver"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": TEST_USER}]},
    ]  # fmt: skip
    cp.kubectl("apply", "-f", "-", input="\n---\n".join(yaml.safe_dump(d) for d in rbac))
    doc = rollout_doc(SYSTEM, revision=REVISION, steps=[{"setWeight": 50}])
    cp.kubectl("apply", "--server-side", "-n", ns, "-f", "-", input=json.dumps(doc))
    p = Plane(cp, ns)

    def enforced() -> bool:  # the policy reaches the admission plugin asynchronously: probe with a dry run
        res = cp.kubectl("create", "--dry-run=server", "-n", ns, "-f", "-", kubeconfig=cp.user_kubeconfig,
                         input=json.dumps(_forged(ADMIN_USER)), check=False)  # fmt: skip
        return res.returncode != 0 and "spec.approver must be the user creating" in res.stderr

    poll("the approver admission policy to be enforced", enforced, timeout=60.0, interval=0.5)
    yield p
    cp.kubectl("delete", "namespace", ns, "--wait=false")


def test_an_approval_in_the_callers_own_name_is_accepted_and_read_back(plane: Plane) -> None:
    rollouts = KubeRollouts(kubeconfig=str(plane.cp.user_kubeconfig), namespace=plane.ns)
    try:
        assert rollouts.decide(SYSTEM, revision=REVISION, approve=True, reason="metrics look right") == TEST_USER
        (a,) = rollouts.approvals(SYSTEM, REVISION)
        assert (a.user, a.approve, a.reason) == (TEST_USER, True, "metrics look right")
        assert rollouts.approvals(SYSTEM, rev(8)) == []
    finally:
        rollouts.close()


def test_an_approval_forged_in_someone_elses_name_is_refused(plane: Plane) -> None:
    res = plane.create(_forged(ADMIN_USER), as_admin=False)
    assert res.returncode != 0
    assert f"spec.approver must be the user creating the Approval ({TEST_USER}), not {ADMIN_USER}" in res.stderr
    assert "Forbidden" in res.stderr or "forbidden" in res.stderr


def test_even_the_cluster_admin_cannot_approve_in_another_users_name(plane: Plane) -> None:
    res = plane.create(_forged(TEST_USER), as_admin=True)
    assert res.returncode != 0 and "spec.approver must be the user creating" in res.stderr
    made = plane.create(_forged(ADMIN_USER), as_admin=True)  # in their own name: accepted
    assert made.returncode == 0, made.stderr


def test_a_decision_cannot_be_changed_after_the_fact(plane: Plane) -> None:
    made = plane.create(approval_object(SYSTEM, REVISION, user=TEST_USER, approve=False, reason="no"), as_admin=False)
    assert made.returncode == 0, made.stderr
    name = json.loads(made.stdout)["metadata"]["name"]
    patch = json.dumps({"spec": {"decision": "approve"}})
    res = plane.cp.kubectl("patch", "approval", name, "-n", plane.ns, "--type=merge", "-p", patch,
                           kubeconfig=plane.cp.user_kubeconfig, check=False)  # fmt: skip
    assert res.returncode != 0 and "decision is final" in res.stderr


def test_modships_adapter_turns_the_refusal_into_forbidden(plane: Plane) -> None:
    """Someone who rewires their client to claim another name is refused by the server, not the client."""

    class Liar(KubeRollouts):
        def user(self) -> str:
            return ADMIN_USER

    rollouts = Liar(kubeconfig=str(plane.cp.user_kubeconfig), namespace=plane.ns)
    try:
        with pytest.raises(Forbidden, match=r"spec\.approver must be the user creating"):
            rollouts.decide(SYSTEM, revision=REVISION, approve=True, reason="trust me")
        admin = KubeRollouts(kubeconfig=str(plane.cp.kubeconfig), namespace=plane.ns)
        try:
            assert "trust me" not in {a.reason for a in approvals_of(admin.kube, plane.ns, SYSTEM, REVISION)}
        finally:
            admin.close()
    finally:
        rollouts.close()
