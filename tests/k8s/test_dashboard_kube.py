"""`modship dashboard --context`: the same page served locally for a cluster's Rollouts, acting with
the user's own kubeconfig credentials (never a service account), in headless Chromium against the
real control plane and the real operator."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.k8s.operator_support import Cluster, poll, rev, rollout_doc
from tests.k8s.test_operator import StartOperator, cluster, ns, operators  # noqa: F401 (fixtures)
from tests.support.dashboard import chromium
from tests.support.k8senv import TEST_USER
from tests.support.services import stop_process

pytestmark = [pytest.mark.k8s, pytest.mark.slow]
MODSHIP = str(Path(sys.executable).parent / "modship")


def grant(c: Cluster, namespace: str) -> None:
    """What a person who runs rollouts in ``namespace`` may do: read and patch Rollouts, read events."""
    rules = [
        {"apiGroups": ["modship.dev"], "resources": ["rollouts"], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
    ]
    c.apply(namespace, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                        "metadata": {"name": "rollout-operator-person"}, "rules": rules})  # fmt: skip
    c.apply(
        namespace,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "rollout-operator-person"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "rollout-operator-person"},
            "subjects": [{"kind": "User", "name": TEST_USER, "apiGroup": "rbac.authorization.k8s.io"}],
        },
    )


@pytest.fixture
def served(cluster: Cluster, ns: str, tmp_path: Path) -> Iterator[str]:  # noqa: F811
    log = tmp_path / "dashboard.log"
    env = {"KUBECONFIG": str(cluster.cp.user_kubeconfig), "PATH": "/usr/bin:/bin", "COLUMNS": "400", "NO_COLOR": "1"}
    proc = subprocess.Popen(
        [MODSHIP, "dashboard", "--context", "modship-test", "--namespace", ns, "--no-open"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        line = poll("the dashboard's URL", lambda: "#token=" in log.read_text() and log.read_text(), timeout=60)
        yield line.split("dashboard:", 1)[1].split()[0]
    finally:
        stop_process(proc)
        print(log.read_text()[-3000:])


def test_the_dashboard_for_a_cluster_acts_as_the_kube_user(
    cluster: Cluster,  # noqa: F811
    ns: str,  # noqa: F811
    operators: StartOperator,  # noqa: F811
    served: str,
) -> None:
    grant(cluster, ns)
    cluster.apply(ns, rollout_doc("shop", revision=rev(1), steps=[{"setWeight": 20}, {"pause": {}}]))
    operators("a")
    cluster.wait_phase(ns, "shop", "Idle", stable=rev(1))
    base = served.split("/dashboard/", maxsplit=1)[0]
    assert httpx.get(f"{base}/v1/systems").status_code == 401  # the session's token, or nothing

    with chromium() as browser:
        page: Any = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(served)
        page.wait_for_selector("#systems tr[data-system='shop']")
        page.click("#systems a[href='#/s/shop']")
        page.wait_for_selector("#rollout[data-phase='Idle']")
        page.evaluate("window.__notReloaded = true")
        cluster.promote(ns, "shop", rev(2))  # someone else's change, seen live
        page.wait_for_selector("#rollout[data-phase='Paused'][data-reason='PauseStep']", timeout=60_000)
        assert page.evaluate("window.__notReloaded") is True

        page.click("#actions button[data-action='abort']")
        page.fill("#confirm-reason", "stop the shop canary")
        page.click("#confirm-ok")
        page.wait_for_selector("#confirm", state="hidden", timeout=30_000)
        page.wait_for_selector("#rollout[data-phase='Aborted']", timeout=60_000)
        why = page.locator("#why").inner_text()
        assert TEST_USER in why or "AbortedByUser" in page.locator("#rollout h1").inner_text(), why
    # the request is recorded with the user the API server authenticated, not a service account
    obj = cluster.rollout(ns, "shop")
    assert TEST_USER in str(obj["metadata"].get("annotations") or {}) + str(obj.get("status") or {})
