"""The operator's in-memory caches: what a watch or an apply answer may and may not tell it."""

from __future__ import annotations

from typing import Any

from controller.adapters.kube.caches import DeploymentIndex, DeploymentState
from controller.adapters.kube.rollouts import RolloutCache
from controller.plan.status import RolloutStatus


def body(status: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "metadata": {"namespace": "ns", "name": "r", "uid": "u1", "resourceVersion": "7", "generation": 1},
        "spec": {"system": "r"},
    }
    if status is not None:
        doc["status"] = status
    return doc


class NoReads:
    def get(self, *args: Any) -> None:
        raise AssertionError("the Rollout was read from the API server")


def test_a_new_rollout_without_status_needs_no_read() -> None:
    cache = RolloutCache()
    assert cache.observe(body())
    e = cache.get(NoReads(), "ns", "r")  # type: ignore[arg-type]
    assert e is not None and e.status == RolloutStatus()


def test_a_watched_status_is_not_trusted() -> None:
    cache = RolloutCache()
    assert cache.observe(body({"phase": "Idle", "machine": {"stable": "r1"}}))
    reads: list[tuple[Any, ...]] = []

    class Reads:
        def get(self, *args: Any) -> dict[str, Any]:
            reads.append(args)
            return body({"phase": "Idle"})

    cache.get(Reads(), "ns", "r")  # type: ignore[arg-type]
    assert len(reads) == 1


def test_an_apply_answer_never_replaces_a_watched_state() -> None:
    index = DeploymentIndex()
    index.seed("ns", "d", DeploymentState(1, ready=False))
    assert index.get("ns", "d") == DeploymentState(1, ready=False)
    assert index.put("ns", "d", DeploymentState(1, ready=True))  # the watch: readiness changed
    index.seed("ns", "d", DeploymentState(1, ready=False))  # an older answer arriving late
    assert index.get("ns", "d") == DeploymentState(1, ready=True)


def test_replica_ratios_start_a_canary_at_one_pod_and_stop_the_previous_stable() -> None:
    from controller.adapters.kube.ratios import replicas
    from controller.adapters.kube.traffic import Split

    before = Split("r1", None)  # the status before the cycle that starts canary r2
    assert replicas(4, before, "r2", "canary") == 1  # not 4 pods, three of them deleted moments later
    assert replicas(4, before, "r1", "stable") == 4
    at = Split("r1", "r2", 50.0)
    assert (replicas(4, at, "r1", "stable"), replicas(4, at, "r2", "canary")) == (2, 2)
    promoted = Split("r2", None)
    assert (replicas(1, promoted, "r2", "stable"), replicas(1, promoted, "r1", "previous")) == (1, 0)
