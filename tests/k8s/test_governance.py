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

from controller.adapters.audit_log import AuditLog
from controller.adapters.kube.rollouts import AUTHOR
from controller.adapters.kube_rollouts import KubeRollouts, approval_object, approvals_of
from controller.apply.kube_control import KubeControl
from controller.errors import Forbidden
from controller.spec import control
from tests.k8s.operator_support import Cluster, poll, rev, rollout_doc
from tests.k8s.test_operator import StartOperator, cluster, ns, operators  # noqa: F401 (fixtures)
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


def _approver_rbac(cp: ControlPlane, namespace: str) -> None:
    """The test user may read Rollouts, change them and create Approvals in ``namespace``."""
    rbac = [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "approver", "namespace": namespace},
         "rules": [{"apiGroups": ["modship.dev"], "resources": ["approvals"],
                    "verbs": ["create", "get", "list", "update", "patch"]},
                   {"apiGroups": ["modship.dev"], "resources": ["rollouts"], "verbs": ["get", "list", "patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "approver", "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "approver"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": TEST_USER}]},
    ]  # fmt: skip
    cp.kubectl("apply", "-f", "-", input="\n---\n".join(yaml.safe_dump(d) for d in rbac))


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> Iterator[Plane]:
    cp = control_plane
    cp.kubectl("apply", "--server-side", "--force-conflicts", *(f"-f={f}" for f in CRDS))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/rollouts.modship.dev",
               "crd/approvals.modship.dev")  # fmt: skip
    policy = cp.helm("template", "modship", str(CHART), "--show-only", "templates/governance.yaml").stdout
    cp.kubectl("apply", "--server-side", "--field-manager=modship-test", "-f", "-", input=policy)
    space = f"gov-{uuid.uuid4().hex[:6]}"
    cp.kubectl("create", "namespace", space)
    _approver_rbac(cp, space)
    doc = rollout_doc(SYSTEM, revision=REVISION, steps=[{"setWeight": 50}])
    cp.kubectl("apply", "--server-side", "-n", space, "-f", "-", input=json.dumps(doc))
    p = Plane(cp, space)

    def enforced() -> bool:  # the policy reaches the admission plugin asynchronously: probe with a dry run
        res = cp.kubectl("create", "--dry-run=server", "-n", space, "-f", "-", kubeconfig=cp.user_kubeconfig,
                         input=json.dumps(_forged(ADMIN_USER)), check=False)  # fmt: skip
        if res.returncode == 0 or "spec.approver must be the user creating" not in res.stderr:
            return False
        claim = {"metadata": {"annotations": {AUTHOR: ADMIN_USER}}, "spec": {"revision": rev(99)}}
        res = cp.kubectl("patch", "rollout", SYSTEM, "-n", space, "--dry-run=server", "--type=merge",
                         "-p", json.dumps(claim), kubeconfig=cp.user_kubeconfig, check=False)  # fmt: skip
        return res.returncode != 0 and "must be the user making the change" in res.stderr

    poll("the admission policies to be enforced", enforced, timeout=60.0, interval=0.5)
    yield p
    cp.kubectl("delete", "namespace", space, "--wait=false")


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


# -- the author of a change ------------------------------------------------------------------------


def _patch(plane: Plane, patch: dict[str, Any], *, as_admin: bool) -> subprocess.CompletedProcess[str]:
    kubeconfig = None if as_admin else plane.cp.user_kubeconfig
    return plane.cp.kubectl("patch", "rollout", SYSTEM, "-n", plane.ns, "--type=merge", "-p", json.dumps(patch),
                            kubeconfig=kubeconfig, check=False)  # fmt: skip


def test_the_author_of_a_change_is_whoever_makes_it(plane: Plane) -> None:
    rollouts = KubeRollouts(kubeconfig=str(plane.cp.user_kubeconfig), namespace=plane.ns)
    try:
        rollouts.write(SYSTEM, target=(rev(9), ["head@2"]))  # modship promote stamps the caller
    finally:
        rollouts.close()
    got = json.loads(plane.cp.kubectl("get", "rollout", SYSTEM, "-n", plane.ns, "-o", "json").stdout)
    assert got["metadata"]["annotations"][AUTHOR] == TEST_USER
    # the admin moves the revision but leaves the test user as its author: refused
    res = _patch(plane, {"spec": {"revision": rev(10)}}, as_admin=True)
    assert res.returncode != 0 and f"must be the user making the change ({ADMIN_USER})" in res.stderr
    # claiming someone else authored it: refused
    res = _patch(plane, {"spec": {"revision": rev(10)}, "metadata": {"annotations": {AUTHOR: ADMIN_USER}}},
                 as_admin=False)  # fmt: skip
    assert res.returncode != 0 and f"not {ADMIN_USER}" in res.stderr
    # an edit that leaves the revision alone keeps the author; in one's own name the change is accepted
    assert _patch(plane, {"spec": {"paused": True}}, as_admin=True).returncode == 0
    # nobody claims, or removes, the authorship of a change already made (their approval would count)
    for claim in (ADMIN_USER, None):
        res = _patch(plane, {"metadata": {"annotations": {AUTHOR: claim}}}, as_admin=True)
        assert res.returncode != 0 and f"changes only with spec.revision: it stays {TEST_USER}" in res.stderr
    ok = _patch(plane, {"spec": {"revision": rev(10)}, "metadata": {"annotations": {AUTHOR: ADMIN_USER}}},
                as_admin=True)  # fmt: skip
    assert ok.returncode == 0, ok.stderr


# -- the operator holds the canary until an approver approves ---------------------------------------


def _audited_promotion(log: AuditLog) -> None:
    """The operator saves a status before it posts that cycle's Events and appends them to its audit
    log (in that order): once the promotion is in the log, its Event is posted too."""
    poll("the promotion in the operator's audit log", lambda: any(e["action"] == "promoted" for e in log.entries()))


def test_the_operator_waits_for_an_approval_then_promotes(
    plane: Plane,
    cluster: Cluster,  # noqa: F811
    ns: str,  # noqa: F811
    operators: StartOperator,  # noqa: F811
    tmp_path: Path,
) -> None:
    cp = cluster.cp
    policy = {"apiVersion": "modship.dev/v1alpha1", "kind": "Policy",
              "spec": {"systems": {"gated": {"approvals": 1, "approvers": [TEST_USER, ADMIN_USER]}}}}  # fmt: skip
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "modship-policy"},
          "data": {"policy.yaml": yaml.safe_dump(policy)}}  # fmt: skip
    cluster.apply(ns, cm)
    _approver_rbac(cp, ns)
    cluster.apply(ns, rollout_doc("gated", revision=rev(1), steps=[{"setWeight": 50}]))
    audit = tmp_path / "audit.jsonl"
    operators(env={"MODSHIP_AUDIT_FILE": str(audit)})
    cluster.wait_phase(ns, "gated", "Idle", stable=rev(1))

    admin = KubeControl(KubeRollouts(kubeconfig=str(cp.kubeconfig), namespace=ns))
    approver = KubeControl(KubeRollouts(kubeconfig=str(cp.user_kubeconfig), namespace=ns))
    admin.promote("gated", control.PromoteRequest(revision=rev(2)), actor=control.Actor(user="x", reason="v2"))

    def awaiting() -> dict[str, Any] | None:
        st = cluster.status(ns, "gated")
        return st if st.get("reason") == "AwaitingApproval" else None

    st = poll("the canary to await approval", awaiting)
    assert st["phase"] == "Progressing" and st["weight"] == 50 and "1 more approval(s) of 1" in st["message"]
    # the author's own approval is recorded (in their own name) but does not count
    admin.approve("gated", control.ApproveRequest(), actor=control.Actor(user="x", reason="mine"))
    approver.approve("gated", control.ApproveRequest(revision=rev(2)), actor=control.Actor(user="x", reason="ok"))
    cluster.wait_phase(ns, "gated", "Promoted", stable=rev(2))
    log = AuditLog(audit)
    _audited_promotion(log)
    reasons = [e.reason for e in cluster.events(ns, "gated")]
    assert "AwaitingApproval" in reasons and "Promoted" in reasons
    # the operator's audit log: the change under its author's name, the promotion with who approved it
    assert log.verify() is None
    entries = [(e["action"], e["actor"], e.get("after")) for e in log.entries()]
    assert ("promote", ADMIN_USER, None) in entries
    promoted = [a for act, _, a in entries if act == "promoted"]
    assert promoted == [{"author": ADMIN_USER, "approvedBy": [TEST_USER], "breakGlass": False}]


# -- the operator enforces who may promote and when, whoever edits the Rollout -----------------------


def _policy_configmap(rule: dict[str, Any]) -> dict[str, Any]:
    policy = {"apiVersion": "modship.dev/v1alpha1", "kind": "Policy", "spec": {"systems": {"held": rule}}}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "modship-policy"},
            "data": {"policy.yaml": yaml.safe_dump(policy)}}  # fmt: skip


def _condition(cluster: Cluster, ns: str, kind: str) -> dict[str, Any] | None:  # noqa: F811 (not the fixtures)
    conds = cluster.rollout(ns, "held").get("status", {}).get("conditions", [])
    return next((c for c in conds if c["type"] == kind), None)


def test_the_operator_refuses_a_change_whose_author_may_not_promote_or_is_outside_a_window(
    plane: Plane,
    cluster: Cluster,  # noqa: F811
    ns: str,  # noqa: F811
    operators: StartOperator,  # noqa: F811
    tmp_path: Path,
) -> None:
    cp = cluster.cp
    cluster.apply(ns, _policy_configmap({"promoters": [ADMIN_USER]}))
    _approver_rbac(cp, ns)  # the test user may patch Rollouts (RBAC), but is no promoter (the policy)
    cluster.apply(ns, rollout_doc("held", revision=rev(1), steps=[{"setWeight": 50}]))
    audit = tmp_path / "audit.jsonl"
    operators(env={"MODSHIP_AUDIT_FILE": str(audit)})
    cluster.wait_phase(ns, "held", "Idle", stable=rev(1))

    # the test user bypasses modship's client check: a bare kubectl patch in their own name
    res = plane.cp.kubectl("patch", "rollout", "held", "-n", ns, "--type=merge", "-p",
                           json.dumps({"spec": {"revision": rev(2)}, "metadata": {"annotations": {AUTHOR: TEST_USER}}}),
                           kubeconfig=cp.user_kubeconfig, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr  # RBAC and the admission policy let it through
    cond = poll("the Governance condition", lambda: _condition(cluster, ns, "Governance"))
    assert cond["status"] == "False" and cond["reason"] == "Forbidden"
    assert f"{TEST_USER} may not promote" in cond["message"] and "NotAPromoter" in cond["message"]
    st = cluster.status(ns, "held")
    assert st["phase"] == "Idle" and st["stableRevision"] == rev(1) and not st.get("canaryRevision")
    assert "Forbidden" in [e.reason for e in cluster.events(ns, "held")]
    # ... and leaving the author out (as a plain kubectl edit may) does not help
    res = plane.cp.kubectl("patch", "rollout", "held", "-n", ns, "--type=merge", "-p",
                           json.dumps({"spec": {"revision": rev(3)}, "metadata": {"annotations": {AUTHOR: None}}}),
                           kubeconfig=cp.user_kubeconfig, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    poll("the unknown author refused",
         lambda: "unknown author" in ((_condition(cluster, ns, "Governance") or {}).get("message") or ""))  # fmt: skip
    assert cluster.status(ns, "held")["phase"] == "Idle"

    # a promoter outside the change windows: OutsideWindow; break-glass with a reason starts it
    cluster.apply(ns, _policy_configmap({"promoters": [ADMIN_USER], "windows": [{"cron": "* * 31 2 *"}]}))
    admin = KubeRollouts(kubeconfig=str(cp.kubeconfig), namespace=ns)
    promote = KubeControl(admin).promote
    try:
        # modship promote: the refused target is no rollout in progress; its client checks the window
        with pytest.raises(Forbidden, match="outside the change windows"):
            promote("held", control.PromoteRequest(revision=rev(4), modules=["head@4"]), actor=control.Actor(user="x"))
        admin.write("held", target=(rev(4), ["head@4"]))  # as a bare kubectl patch would: the operator refuses

        def outside() -> dict[str, Any] | None:
            c = _condition(cluster, ns, "Governance")
            return c if c is not None and c["reason"] == "OutsideWindow" else None

        cond = poll("OutsideWindow", outside)
        assert rev(4) in cond["message"] and cluster.status(ns, "held")["phase"] == "Idle"
        modules = _condition(cluster, ns, "ModuleGovernance")  # head@4's tier and owners: no registry to ask
        assert modules is not None and modules["status"] == "False" and modules["reason"] == "NoRegistry"
        # the same change again, breaking glass
        glass = control.PromoteRequest(revision=rev(4), modules=["head@4"], break_glass=True)
        promote("held", glass, actor=control.Actor(user="x", reason="INC-42 hotfix"))
    finally:
        admin.close()
    # one step and nothing to wait for: the canary is Progressing for a single cycle (tens of ms),
    # so what proves it started is where it ends, its Events and the audit log
    cluster.wait_phase(ns, "held", "Promoted", stable=rev(4))
    assert _condition(cluster, ns, "Governance") is None
    log = AuditLog(audit)
    _audited_promotion(log)
    events = cluster.events(ns, "held")
    reasons = [e.reason for e in events]
    assert reasons.count("OutsideWindow") == 1 and "RolloutStarted" in reasons
    glass = [e.message for e in events if e.reason == "BreakGlass"]
    assert glass == [f"{ADMIN_USER} broke glass for {rev(4)}: INC-42 hotfix"]

    assert log.verify() is None
    refused = [(e["actor"], e["after"]["refused"]) for e in log.entries() if e["action"] == "refused"]
    assert refused == [(TEST_USER, "NotAPromoter"), ("unknown", "NotAPromoter"), (ADMIN_USER, "OutsideWindow")]
    assert ("promote", ADMIN_USER) in [(e["action"], e["actor"]) for e in log.entries()]
    overrides = [(e["actor"], e["reason"], e["after"]) for e in log.entries() if e["action"] == "override"]
    assert overrides == [(ADMIN_USER, "INC-42 hotfix", {"revision": rev(4), "breakGlass": True})]
    promoted = [e["after"] for e in log.entries() if e["action"] == "promoted"]
    assert promoted == [{"author": ADMIN_USER, "approvedBy": [], "breakGlass": True}]
