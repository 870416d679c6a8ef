"""The ``modship`` traffic provider on Kubernetes, without a cluster: the configuration document (the
same as the local runtime's), merged telemetry of router replicas, the router Deployment, and how
router pods are configured (every running pod, or the split is not applied)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from controller.adapters.kube.api import Kube
from controller.adapters.kube.caches import Shared
from controller.adapters.kube.modship_router import ModshipRouter, router_name
from controller.adapters.kube.names import Owner
from controller.adapters.kube.router_pods import RouterPods
from controller.adapters.kube.traffic import Context
from controller.errors import NotFound, SpecError, Unavailable
from controller.plan import router_config, router_telemetry
from controller.plan.actions import SetTraffic
from controller.spec.rollout import ModshipRouting, TrafficRouting


def test_the_config_names_both_revisions_and_only_what_a_canary_needs() -> None:
    t = SetTraffic("r1", "r2", 20, header_route=("x-canary", "1"), mirror=50, sticky_header="x-user")
    want = router_config.wanted("s", t, stable_url="http://a:1", canary_url="http://b:2")
    assert want == {
        "system": "s",
        "stable": {"revision": "r1", "url": "http://a:1"},
        "canary": {"revision": "r2", "url": "http://b:2"},
        "weight": 20,
        "headerRoute": {"name": "x-canary", "value": "1"},
        "mirror": {"percent": 50},
        "sticky": {"header": "x-user", "cookie": None},
        "fallback": True,
    }
    idle = router_config.wanted("s", t, stable_url="http://a:1", canary_url=None)
    assert (idle["canary"], idle["weight"], idle["headerRoute"], idle["mirror"]) == (None, 0.0, None, None)
    assert router_config.same({**want, "generation": 7, "weight": 20.0}, want)
    assert not router_config.same({**want, "weight": 25}, want)
    assert not router_config.same(None, want) and not router_config.same({}, want)


def _snap(requests: int, labels: dict[str, int], counts: list[int], now: float) -> dict[str, Any]:
    block = {
        "role": "canary",
        "requests": requests,
        "labels": labels,
        "latency": {"edges": [0.1, 1.0], "counts": counts},
        "confidence": {"sum": 0.5 * requests, "count": requests},
        "mirror": {"requests": 1, "errors": 0, "compared": 1, "disagreed": 0},
    }
    return {"generation": 3, "now": now, "window": 60, "revisions": {"r2": block}}


def test_telemetry_of_router_replicas_adds_up() -> None:
    a = _snap(10, {"sport": 6, "tech": 4}, [7, 3], now=100.0)
    b = _snap(5, {"sport": 1, "business": 4}, [5, 0], now=101.0)
    b["revisions"]["r1"] = {**b["revisions"]["r2"], "role": "stable"}
    m = router_telemetry.merge([a, b])
    r2 = m["revisions"]["r2"]
    assert (m["now"], m["generation"], m["window"]) == (101.0, 3, 60)
    assert (r2["requests"], r2["role"]) == (15, "canary")
    assert r2["labels"] == {"sport": 7, "tech": 4, "business": 4}
    assert r2["latency"] == {"edges": [0.1, 1.0], "counts": [12, 3]}
    assert r2["confidence"] == {"sum": 7.5, "count": 15} and r2["mirror"]["compared"] == 2
    assert m["revisions"]["r1"]["role"] == "stable"
    with pytest.raises(ValueError):
        router_telemetry.merge([])


def test_only_one_traffic_provider() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        TrafficRouting.model_validate({"modship": {}, "istio": {"virtualService": "v"}})
    assert TrafficRouting.model_validate({"modship": {"replicas": 2}}).modship == ModshipRouting(replicas=2)


def _router(monkeypatch: pytest.MonkeyPatch, **spec: Any) -> ModshipRouter:
    monkeypatch.setenv("MODSHIP_ROUTER_IMAGE", "ghcr.io/modship/modship:0.1.0")
    ctx = Context(Shared(cast(Kube, None)), Owner("topic", "ml", "uid-1"), "topic", 3000)
    return ModshipRouter(ctx, ModshipRouting(**spec))


def test_the_router_deployment_is_locked_down_and_ready_only_once_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    d = _router(monkeypatch, replicas=2, port=9000).deployment()
    assert d["metadata"]["name"] == router_name("topic") == "topic-router"
    assert d["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert d["spec"]["replicas"] == 2
    assert d["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pod = d["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/modship/modship:0.1.0"
    assert c["args"][:6] == ["--host", "0.0.0.0", "--port", "9000", "--system", "topic"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/-/modship/readyz"
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] and pod["automountServiceAccountToken"] is False
    (env,) = c["env"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "modship-router-token", "key": "token"}  # never inline
    monkeypatch.delenv("MODSHIP_ROUTER_IMAGE")
    with pytest.raises(SpecError, match="MODSHIP_ROUTER_IMAGE"):
        ModshipRouter(Context(Shared(cast(Kube, None)), Owner("t", "ml", "u"), "t", 3000), ModshipRouting())


class FakePods(RouterPods):
    """Router pods answering from memory: ``configs`` per pod, ``down`` pods unreachable."""

    def __init__(self, names: list[str], down: tuple[str, ...] = ()) -> None:
        self.pods = [{"metadata": {"name": n, "uid": f"u-{n}"}} for n in names]
        self.configs: dict[str, dict[str, Any]] = {}
        self.down = down
        self.calls: list[tuple[str, str]] = []

    def running(self) -> list[dict[str, Any]]:
        return self.pods

    def forget(self) -> None:
        pass

    def call(
        self, pod: str, method: str, path: str, *, body: Any = None, query: tuple[tuple[str, str], ...] = ()
    ) -> dict[str, Any]:
        self.calls.append((pod, method))
        if pod in self.down:
            raise Unavailable("error trying to reach service: dial tcp: connection refused")
        if method == "PUT":
            self.configs[pod] = body
            return {"generation": body["generation"]}
        if pod not in self.configs:
            raise NotFound("no config yet")
        return self.configs[pod]


def test_every_running_router_pod_gets_the_split_or_it_is_not_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    router = _router(monkeypatch)
    want = router_config.wanted(
        "topic", SetTraffic("r1", "r2", 10), stable_url=router.url("r1"), canary_url=router.url("r2")
    )
    assert want["stable"]["url"] == "http://topic-r1.ml.svc:3000"

    with pytest.raises(Unavailable, match="no pod of Deployment ml/topic-router runs yet"):
        router.configure(FakePods([]), want)

    pods = FakePods(["a", "b"], down=("b",))
    with pytest.raises(Unavailable, match="b: error trying to reach service"):
        router.configure(pods, want)
    assert pods.configs["a"]["generation"] == 1 and "b" not in pods.configs

    pods.down, pods.calls = (), []
    router.configure(pods, want)  # a is known to have it: only b is read and written
    assert pods.calls == [("b", "GET"), ("b", "PUT")]
    pods.calls = []
    router.configure(pods, want)
    assert pods.calls == []  # nothing changed: no request at all

    moved = {**want, "weight": 50}
    router.configure(pods, moved)
    assert [c["generation"] for c in pods.configs.values()] == [2, 2]
    assert all(c["weight"] == 50 for c in pods.configs.values())


def test_a_split_sending_the_canary_requests_waits_until_every_router_reaches_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    router = _router(monkeypatch)
    urls = {"stable_url": router.url("r1"), "canary_url": router.url("r2")}
    idle = router_config.wanted("topic", SetTraffic("r1", "r2", 0), **urls)
    half = router_config.wanted("topic", SetTraffic("r1", "r2", 50), **urls)
    assert not router_config.sends_to_canary(idle) and router_config.sends_to_canary(half)

    class Warming(FakePods):
        def call(self, pod: str, method: str, path: str, **kw: Any) -> dict[str, Any]:
            answer = super().call(pod, method, path, **kw)
            return {**answer, "canaryWarming": pod in warming}

    warming = {"b"}
    pods = Warming(["a", "b"])
    router.configure(pods, idle)  # weight 0: nothing to wait for
    with pytest.raises(Unavailable, match="not reachable from router pods b yet"):
        router.configure(pods, half)
    warming.clear()
    pods.calls = []
    router.configure(pods, half)
    assert pods.calls == [("b", "GET")]  # a was done; b already had the split, now in force
