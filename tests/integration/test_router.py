"""The router process in front of two real upstream processes; the built-in metrics provider on it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.adapters.builtin_metrics import BuiltinSource
from controller.errors import SpecError
from controller.plan.observations import QueryContext
from controller.spec.rollout import BuiltinMetric, Check, Provider, Threshold
from tests.support.services import free_port, stop_process, wait_until
from tests.support.upstream import Upstream

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BODY = {"text": "the match ended in a draw after extra time"}


class RouterProc:
    def __init__(self, tmp: Path, system: str = "demo", token: str | None = None) -> None:
        self.system = system
        self.token = token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = tmp / "router-state.json"
        self.log = tmp / "router.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.generation = 0

    def start(self) -> RouterProc:
        cmd = [
            sys.executable,
            "-m",
            "controller.entrypoints.router",
            "--port",
            str(self.port),
            "--system",
            self.system,
            "--state",
            str(self.state),
        ]
        env = {**os.environ, "MODSHIP_ROUTER_TOKEN": self.token} if self.token else None
        self.proc = subprocess.Popen(
            cmd, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True, env=env
        )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited: {self.log.read_text()[-2000:]}")
            return httpx.get(f"{self.url}/-/modship/livez", timeout=1).status_code == 200

        wait_until(ready, timeout=20, interval=0.05, what="router ready")
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        stop_process(self.proc, grace=10)
        return self.proc.returncode

    def put(self, doc: dict[str, Any]) -> httpx.Response:
        return httpx.put(f"{self.url}/-/modship/config", json=doc, timeout=5)

    def telemetry(self, window: float = 60) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/-/modship/telemetry", params={"window": window}, timeout=5)
        r.raise_for_status()
        return dict(r.json())


@dataclass
class Stack:
    stable: Upstream
    canary: Upstream
    router: RouterProc
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.router.url, timeout=10)

    def configure(self, *, warmed: bool = True, **changes: Any) -> dict[str, Any]:
        """PUT a config; with ``warmed``, return once a new canary is routed to (the router probes
        it first, and on a busy machine that can outlast the next request)."""
        self.router.generation += 1
        doc: dict[str, Any] = {
            "system": self.router.system,
            "generation": self.router.generation,
            "stable": {"revision": self.stable.revision, "url": self.stable.url},
            "canary": {"revision": self.canary.revision, "url": self.canary.url},
            "weight": 0,
            **changes,
        }
        r = self.router.put(doc)
        assert r.status_code == 200, r.text
        if warmed and r.json()["canaryWarming"]:
            config = f"{self.router.url}/-/modship/config"
            wait_until(lambda: not httpx.get(config, timeout=5).json()["canaryWarming"], timeout=10, what="warm")
        return doc

    def predict(self, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        return self.client.post("/predict", json=BODY, headers=headers, **kw)

    def rev(self, revision: str, window: float = 60) -> dict[str, Any]:
        return dict(self.router.telemetry(window)["revisions"].get(revision) or {})


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with (
        Upstream("r1", label="sport", log_dir=tmp_path).running() as stable,
        Upstream("r2", label="business", log_dir=tmp_path).running() as canary,
    ):
        router = RouterProc(tmp_path).start()
        s = Stack(stable, canary, router)
        try:
            yield s
        finally:
            s.client.close()
            router.stop()


def routed(responses: list[httpx.Response]) -> Counter[str]:
    return Counter(r.headers["x-modship-routed"] for r in responses)


# -- routing ----------------------------------------------------------------------------------------


def test_without_config_503_then_a_weighted_split(stack: Stack) -> None:
    r = stack.predict()
    assert r.status_code == 503 and "no stable revision" in r.json()["error"]

    stack.configure(weight=20)
    answers = [stack.predict() for _ in range(1000)]
    assert all(r.status_code == 200 for r in answers)
    counts = routed(answers)
    assert 137 <= counts["canary"] <= 263, counts  # 20 % +- 5 standard deviations
    for r in answers:
        expected = ("r2", "business") if r.headers["x-modship-routed"] == "canary" else ("r1", "sport")
        assert (r.headers["x-modship-revision"], r.json()["prediction"][0]["label"]) == expected
    assert (stack.rev("r2")["requests"], stack.rev("r1")["requests"]) == (counts["canary"], counts["stable"])

    stack.configure(weight=100)
    assert routed([stack.predict() for _ in range(20)]) == {"canary": 20}
    stack.configure(weight=0)
    assert routed([stack.predict() for _ in range(20)]) == {"stable": 20}


def test_sticky_header_and_cookie_keep_a_user_on_one_revision(stack: Stack) -> None:
    stack.configure(weight=50, sticky={"header": "x-user-id", "cookie": "uid"})
    seen: dict[str, set[str]] = {}
    for user in range(40):
        for _ in range(5):
            r = stack.predict(headers={"x-user-id": f"user-{user}"})
            seen.setdefault(f"h{user}", set()).add(r.headers["x-modship-revision"])
            stack.client.cookies.set("uid", f"cookie-user-{user}")
            r = stack.predict()
            stack.client.cookies.clear()
            seen.setdefault(f"c{user}", set()).add(r.headers["x-modship-revision"])
    assert all(len(revs) == 1 for revs in seen.values()), seen
    assert {next(iter(revs)) for revs in seen.values()} == {"r1", "r2"}

    # raising the weight only moves users to the canary
    on_canary = {u for u in range(40) if seen[f"h{u}"] == {"r2"}}
    stack.configure(weight=80, sticky={"header": "x-user-id"})

    def revision(u: int) -> str:
        return str(stack.predict(headers={"x-user-id": f"user-{u}"}).headers["x-modship-revision"])

    now_canary = {u for u in range(40) if revision(u) == "r2"}
    assert on_canary < now_canary


def test_header_route_sends_matching_requests_to_the_canary(stack: Stack) -> None:
    stack.configure(headerRoute={"name": "X-Canary", "value": "yes"})
    assert stack.predict(headers={"x-canary": "yes"}).headers["x-modship-routed"] == "canary"
    assert stack.predict(headers={"x-canary": "no"}).headers["x-modship-routed"] == "stable"
    assert stack.predict().headers["x-modship-routed"] == "stable"
    stack.configure(headerRoute={"name": "x-canary", "value": None})
    assert stack.predict(headers={"x-canary": "anything"}).headers["x-modship-routed"] == "canary"


def test_mirroring_compares_answers_and_never_changes_or_delays_the_client(stack: Stack) -> None:
    stack.configure(mirror={"percent": 100})
    answers = [stack.predict() for _ in range(50)]
    assert routed(answers) == {"stable": 50}
    assert {r.json()["prediction"][0]["label"] for r in answers} == {"sport"}
    mirror = wait_until(lambda: (m := stack.rev("r2")["mirror"])["compared"] == 50 and m, timeout=10)
    assert mirror == {"requests": 50, "errors": 0, "compared": 50, "disagreed": 50}
    canary = stack.rev("r2")
    assert canary["requests"] == 0 and canary["labels"] == {"business": 50}
    assert stack.canary.stats()["mirrored"] == 50

    stack.canary.control(delay=2.0)  # a slow canary does not slow the client
    t0 = time.monotonic()
    assert all(stack.predict().status_code == 200 for _ in range(10))
    assert time.monotonic() - t0 < 1.5

    stack.canary.control(delay=0, mode="fail")
    assert all(stack.predict().status_code == 200 for _ in range(10))
    wait_until(lambda: stack.rev("r2")["mirror"]["errors"] == 10, timeout=10, what="mirror errors counted")


def test_a_new_config_lets_requests_in_flight_finish_where_they_started(stack: Stack) -> None:
    stack.configure(weight=100)
    stack.canary.control(delay=1.0)
    answer: list[httpx.Response] = []
    t = threading.Thread(target=lambda: answer.append(stack.predict()))
    t.start()
    wait_until(lambda: stack.canary.stats()["requests"] == 1, timeout=10, what="a request in flight on the canary")
    stack.router.generation += 1
    doc = {
        "system": "demo",
        "generation": stack.router.generation,
        "stable": {"revision": "r1", "url": stack.stable.url},
    }
    assert stack.router.put(doc).status_code == 200  # the canary is gone from the config
    assert stack.predict().headers["x-modship-routed"] == "stable"
    t.join(timeout=10)
    assert (answer[0].status_code, answer[0].headers["x-modship-routed"]) == (200, "canary")


def test_a_new_canary_gets_no_request_before_it_accepts_connections(stack: Stack, tmp_path: Path) -> None:
    late = Upstream("r3", label="business", log_dir=tmp_path)  # its port refuses until it starts
    stack.configure(
        canary={"revision": "r3", "url": late.url}, weight=100, headerRoute={"name": "x-canary"}, warmed=False
    )
    answers = [stack.predict({"x-canary": "1"}) for _ in range(20)]
    assert [r.status_code for r in answers] == [200] * 20
    assert routed(answers) == {"stable": 20}
    assert stack.rev("r3").get("errors", 0) == 0  # nothing counted against a canary not there yet
    config = f"{stack.router.url}/-/modship/config"
    assert httpx.get(config).json()["canaryWarming"] is True  # what the operator waits for
    with late.running():
        wait_until(lambda: stack.predict().headers["x-modship-routed"] == "canary", timeout=10, what="canary")
        assert routed([stack.predict() for _ in range(10)]) == {"canary": 10}
        assert httpx.get(config).json()["canaryWarming"] is False
    assert stack.rev("r3").get("errors", 0) == 0


# -- fallback ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fail", "close", "truncate"])
def test_a_failing_canary_falls_back_to_stable(stack: Stack, mode: str) -> None:
    stack.configure(weight=100)
    stack.canary.control(mode=mode)
    answers = [stack.predict() for _ in range(30)]
    assert [r.status_code for r in answers] == [200] * 30
    assert routed(answers) == {"canary-fallback": 30}
    assert {r.headers["x-modship-revision"] for r in answers} == {"r1"}
    canary, stable = stack.rev("r2"), stack.rev("r1")
    assert (canary["requests"], canary["errors"], canary["fallbacks"]) == (30, 30, 30)
    assert (stable["requests"], stable["errors"]) == (30, 0)

    stack.configure(weight=100, fallback=False)
    r = stack.predict()
    assert r.status_code == (500 if mode == "fail" else 502)
    assert r.headers["x-modship-routed"] == "canary"


def test_a_hanging_canary_times_out_into_stable(stack: Stack) -> None:
    stack.configure(weight=100, timeoutSeconds=0.3)
    stack.canary.control(mode="hang")
    t0 = time.monotonic()
    r = stack.predict()
    assert (r.status_code, r.headers["x-modship-routed"]) == (200, "canary-fallback")
    assert 0.3 <= time.monotonic() - t0 < 2.0
    metrics = httpx.get(f"{stack.router.url}/metrics").text
    errors = [
        (s.labels, s.value)
        for f in text_string_to_metric_families(metrics)
        for s in f.samples
        if s.name == "modship_router_upstream_errors_total"
    ]
    assert errors == [({"system": "demo", "revision": "r2", "kind": "timeout"}, 1)]


def test_killing_the_canary_mid_load_loses_no_request(stack: Stack) -> None:
    stack.configure(weight=50)
    stack.canary.control(delay=0.01)  # requests are in flight on the canary when it dies
    results: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=stack.router.url, timeout=10) as c:
            while not stop.is_set():
                try:
                    results.append(c.post("/predict", json=BODY).status_code)
                except httpx.HTTPError:
                    results.append(-1)

    workers = [threading.Thread(target=load) for _ in range(8)]
    for w in workers:
        w.start()
    try:
        wait_until(lambda: len(results) >= 300, timeout=30, what="load running")
        stack.canary.kill()
        done = len(results)
        wait_until(lambda: len(results) >= done + 500, timeout=30, what="load after the kill")
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30)
    assert Counter(results) == {200: len(results)}
    canary = stack.rev("r2")
    assert canary["errors"] > 0 and canary["fallbacks"] == canary["errors"]
    assert stack.rev("r1")["errors"] == 0


# -- admin API ---------------------------------------------------------------------------------------


def test_config_generations_only_grow_and_bad_configs_are_refused(stack: Stack) -> None:
    doc = stack.configure(weight=10)
    assert stack.router.put({**doc, "generation": doc["generation"] - 1}).status_code == 409
    assert stack.router.put(doc).status_code == 200  # the same generation again is idempotent
    bad = stack.router.put({**doc, "generation": 99, "weight": 140})
    assert bad.status_code == 400 and bad.json()["detail"][0]["loc"] == ["weight"]
    assert stack.router.put({**doc, "generation": 99, "system": "other"}).status_code == 400
    got = httpx.get(f"{stack.router.url}/-/modship/config").json()
    assert (got["generation"], got["weight"]) == (doc["generation"], 10)


def test_with_a_token_the_admin_api_answers_only_to_it_and_readiness_waits_for_a_config(tmp_path: Path) -> None:
    token = "s3cret-router-token"
    with Upstream("r1", log_dir=tmp_path).running() as stable:
        router = RouterProc(tmp_path, token=token).start()
        try:
            admin, good = f"{router.url}/-/modship", {"x-modship-token": token}
            assert httpx.get(f"{admin}/readyz").status_code == 503  # no config: not ready for clients
            doc = {"system": "demo", "generation": 1, "stable": {"revision": "r1", "url": stable.url}}
            for headers in ({}, {"x-modship-token": "wrong"}, {"authorization": f"Bearer {token}"}):
                assert httpx.put(f"{admin}/config", json=doc, headers=headers).status_code == 401
                for path in ("config", "telemetry", "healthz"):
                    r = httpx.get(f"{admin}/{path}", headers=headers)
                    assert r.status_code == 401 and "x-modship-token" in r.json()["error"]
            assert httpx.get(f"{admin}/readyz").status_code == 503  # nothing was applied
            assert httpx.put(f"{admin}/config", json=doc, headers=good).status_code == 200
            assert httpx.get(f"{admin}/readyz").json() == {"ready": True}
            assert httpx.get(f"{admin}/config", headers=good).json()["generation"] == 1
            assert httpx.get(f"{admin}/telemetry", headers=good).status_code == 200
            assert httpx.get(f"{router.url}/metrics").status_code == 200  # counts only, for Prometheus
            assert httpx.post(f"{router.url}/predict", json=BODY).status_code == 200  # clients need no token
            assert token not in router.log.read_text()
        finally:
            router.stop()


def test_a_restarted_router_serves_its_persisted_config(stack: Stack) -> None:
    stack.configure(weight=100)
    assert stack.router.stop() == 0  # SIGTERM: a clean exit
    stack.router.start()
    stack.client.close()
    stack.client = httpx.Client(base_url=stack.router.url, timeout=10)
    r = stack.predict()
    assert (r.status_code, r.headers["x-modship-routed"]) == (200, "canary")
    assert httpx.get(f"{stack.router.url}/-/modship/config").json()["generation"] == stack.router.generation
    health = httpx.get(f"{stack.router.url}/-/modship/healthz").json()
    assert health["upstreams"]["canary"] == {
        "revision": "r2",
        "url": stack.canary.url,
        "reachable": True,
        "ready": True,
    }

    stack.canary.kill()
    health = httpx.get(f"{stack.router.url}/-/modship/healthz").json()
    assert health["upstreams"]["canary"]["reachable"] is False
    assert health["upstreams"]["stable"]["reachable"] is True


def test_telemetry_windows(stack: Stack) -> None:
    stack.configure(weight=0)
    for _ in range(10):
        stack.predict()
    stable = stack.rev("r1", window=60)
    assert stable["requests"] == 10 and stable["labels"] == {"sport": 10} and stable["role"] == "stable"
    assert sum(stable["latency"]["counts"]) == 10 and sum(stable["inputChars"]["counts"]) == 10
    assert stable["evaluations"] == {"pass": 10, "fail": 0} and stable["confidence"]["count"] == 10
    wait_until(lambda: stack.rev("r1", window=1)["requests"] == 0, timeout=5, what="a 1 s window empties")
    assert stack.rev("r1", window=60)["requests"] == 10
    assert stack.rev("r2")["requests"] == 0 and stack.rev("r2")["role"] == "canary"
    r = httpx.get(f"{stack.router.url}/-/modship/telemetry", params={"window": "soon"})
    assert r.status_code == 400


def test_metrics_parse(stack: Stack) -> None:
    stack.configure(weight=100, mirror={"percent": 100})
    stack.canary.control(mode="fail")
    for _ in range(5):
        stack.predict()  # canary fails, stable answers (and stable is never mirrored: weight 100)
    stack.configure(weight=0, mirror={"percent": 100})
    stack.canary.control(mode="ok")
    for _ in range(5):
        stack.predict()
    wait_until(lambda: stack.rev("r2")["mirror"]["compared"] == 5, timeout=10)

    text = httpx.get(f"{stack.router.url}/metrics").text
    fams = {f.name: f for f in text_string_to_metric_families(text)}

    def value(fam: str, sample: str, **labels: str) -> float:
        return next(
            s.value
            for s in fams[fam].samples
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
        )

    reqs = "modship_router_requests"
    assert value(reqs, f"{reqs}_total", revision="r2", role="canary", code="500") == 5
    assert value(reqs, f"{reqs}_total", revision="r1", role="stable", code="200") == 10
    dur = "modship_router_request_duration_seconds"
    assert value(dur, f"{dur}_count", revision="r1", role="stable") == 10
    assert value(dur, f"{dur}_bucket", revision="r1", role="stable", le="+Inf") == 10
    assert value("modship_router_fallbacks", "modship_router_fallbacks_total", revision="r2") == 5
    assert value("modship_router_mirrored", "modship_router_mirrored_total", revision="r2") == 5
    assert value("modship_router_disagreements", "modship_router_disagreements_total", revision="r2") == 5
    errs = "modship_router_upstream_errors"
    assert value(errs, f"{errs}_total", revision="r2", kind="status5xx") == 5
    assert value("modship_router_weight", "modship_router_weight", revision="r1", role="stable") == 100
    assert value("modship_router_weight", "modship_router_weight", revision="r2", role="canary") == 0
    gen = "modship_router_config_generation"
    assert value(gen, gen, system="demo") == stack.router.generation


# -- HTTP details ------------------------------------------------------------------------------------


def _raw(port: int, data: bytes, *, until: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        while buf.count(until) < 1:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf


def test_chunked_upstreams_pipelining_limits_and_disconnects(stack: Stack) -> None:
    stack.configure(weight=100)
    stack.canary.control(chunked=True)
    r = stack.predict()
    assert r.status_code == 200 and r.json()["prediction"][0]["label"] == "business"
    assert "transfer-encoding" not in r.headers and int(r.headers["content-length"]) == len(r.content)

    body = b'{"text": "x"}'
    one = b"POST /predict HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    last = one.replace(b"host: t\r\n", b"host: t\r\nconnection: close\r\n")
    out = _raw(stack.router.port, one + one + last, until=b"\x00")  # read until the router closes
    assert out.count(b"HTTP/1.1 200 OK") == 3 and out.count(b"x-modship-routed: canary") == 3

    expect = b"POST /predict HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 13\r\n\r\n"
    with socket.create_connection(("127.0.0.1", stack.router.port), timeout=5) as s:
        s.sendall(expect)
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(body)
        assert b"200 OK" in s.recv(65536)

    huge = stack.client.post("/predict", content=b"x" * (5 << 20))
    assert huge.status_code == 413

    for _ in range(20):  # clients that give up mid-request or mid-answer
        with contextlib.closing(socket.create_connection(("127.0.0.1", stack.router.port))) as s:
            s.sendall(one[:30])
        with contextlib.closing(socket.create_connection(("127.0.0.1", stack.router.port))) as s:
            s.sendall(one)
    assert stack.predict().status_code == 200


# -- the built-in metrics provider -----------------------------------------------------------------


def check(metric: BuiltinMetric) -> Check:
    return Check(name=metric.value, metric=metric, threshold=Threshold(max=1.0))


CTX = QueryContext(system="demo", revision="r2", stable_revision="r1", window_s=60)


def test_builtin_source_error_rate_and_disagreement(stack: Stack) -> None:
    source = BuiltinSource(stack.router.url)
    assert source.online()
    with pytest.raises(SpecError, match="no metric"):
        source.sample(Check(name="q", provider=Provider.PROMETHEUS, query="up", threshold=Threshold(max=1)), CTX)
    stack.configure(weight=50, sticky={"header": "x-user-id"})
    users = [f"u{i}" for i in range(200)]
    for u in users:
        stack.predict(headers={"x-user-id": u})
    stack.canary.control(mode="fail")
    for u in users:
        stack.predict(headers={"x-user-id": u})
    s = source.sample(check(BuiltinMetric.ERROR_RATE), CTX)
    canary = stack.rev("r2")
    assert s.error is None and s.samples == canary["requests"] > 0
    assert s.value == pytest.approx(0.5) and s.stable == 0.0
    latency = source.sample(check(BuiltinMetric.LATENCY_P50), CTX)
    assert latency.value is not None and latency.stable is not None and 0 < latency.stable < 0.5

    stack.canary.control(mode="ok")
    stack.configure(weight=0, mirror={"percent": 100})
    for _ in range(30):
        stack.predict()
    wait_until(lambda: stack.rev("r2")["mirror"]["compared"] == 30, timeout=10)
    d = source.sample(check(BuiltinMetric.DISAGREEMENT), CTX)
    assert (d.value, d.stable, d.samples, d.error) == (1.0, None, 30, None)
    jsd = source.sample(check(BuiltinMetric.PREDICTION_JSD), CTX)
    assert jsd.value == pytest.approx(1.0)
    source.close()


def test_builtin_source_reports_a_down_provider_as_an_error(tmp_path: Path) -> None:
    source = BuiltinSource(f"http://127.0.0.1:{free_port()}")
    assert source.online() is False
    s = source.sample(check(BuiltinMetric.ERROR_RATE), CTX)
    assert s.value is None and s.error is not None and "router telemetry" in s.error
    source.close()
