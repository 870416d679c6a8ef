"""The operator runs the built-in load-test hook while a canary is in flight, and only then: the
Rollout's ``LoadTest`` condition on the real control plane (its pods are kwok's, so nothing answers
the requests: the receiving end is the unit tests' and the local runtime's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.k8s.operator_support import Cluster, poll, rev, rollout_doc
from tests.k8s.test_operator import StartOperator, cluster, ns, operators  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.k8s, pytest.mark.slow]


def _load_test(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:  # noqa: F811 (not the fixtures)
    conds = cluster.status(ns, name).get("conditions", [])
    return next((c for c in conds if c["type"] == "LoadTest"), None)


def test_the_hook_runs_while_the_canary_is_in_flight(
    cluster: Cluster,  # noqa: F811
    ns: str,  # noqa: F811
    operators: StartOperator,  # noqa: F811
    tmp_path: Path,
) -> None:
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    doc = rollout_doc("lt", revision=rev(1), steps=[{"setWeight": 50}, {"pause": {}}])
    doc["spec"]["loadTest"] = {"dataset": "requests.jsonl", "rate": 2}
    cluster.apply(ns, doc)
    operators(env={"MODSHIP_DATASETS": str(datasets)})
    cluster.wait_phase(ns, "lt", "Idle", stable=rev(1))
    assert _load_test(cluster, ns, "lt") is None  # nothing in flight: no load

    cluster.promote(ns, "lt", rev(2))
    cond = poll("the dataset refused", lambda: _load_test(cluster, ns, "lt"))
    assert cond["status"] == "False" and cond["reason"] == "DatasetUnreadable" and "cannot read" in cond["message"]

    (datasets / "requests.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    cluster.patch_spec(ns, "lt", {"loadTest": {"dataset": "requests.jsonl", "rate": 3}})  # a new spec: read again

    def running() -> dict[str, Any] | None:
        c = _load_test(cluster, ns, "lt")
        return c if c is not None and c["status"] == "True" else None

    cond = poll("the hook running", running)
    assert cond["reason"] == "Running"
    assert cond["message"] == f"replaying 2 request(s) at 3/s to http://lt.{ns}.svc:3000/predict"

    cluster.promote(ns, "lt", rev(1))  # back to stable: the canary is aborted, the load stops
    poll("the hook stopped", lambda: _load_test(cluster, ns, "lt") is None)
