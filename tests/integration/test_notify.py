"""Notifications against a real local HTTP receiver that is up, failing, slow or down: delivered,
retried, dead-lettered, and the rollout never waits for them."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.memory import MemoryMetrics, MemoryStore, MemoryTarget
from controller.adapters.notify import SIGNATURE_HEADER, Notifier, read_dead_letters
from controller.apply import reconcile
from controller.plan.observations import Sample
from controller.plan.status import Phase, RolloutStatus
from controller.spec.notifications import Notifications
from controller.spec.rollout import Provider, Rollout
from tests.conftest import Cli
from tests.support.receiver import down_url, receiving

ROLLOUT: dict[str, Any] = {
    "apiVersion": "modship.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "sys"},
    "spec": {"system": "sys", "revision": "rA", "modules": ["topic-head@2"],
             "strategy": {"canary": {"steps": [{"setWeight": 20}, {"analysis": {"checks": ["errors"]}},
                                               {"setWeight": 60}]}},
             "analysis": {"checks": [{"name": "errors", "metric": "errorRate", "threshold": {"max": 0.05},
                                      "window": 2, "interval": 1, "count": 2, "minSamples": 10}]}},
}  # fmt: skip
LINKS = {"dashboard": "http://127.0.0.1:8765", "mlflow": "http://mlflow.example:5000"}


def config(url: Any, *, kind: str = "webhook", triggers: list[str] | None = None, **sink: Any) -> Notifications:
    s = {"name": "hook", "type": kind, "url": url, "backoff": 0.05, "attempts": 3, "timeout": 2, **sink}
    sub: dict[str, Any] = {"system": "sys", "sinks": ["hook"]}
    if triggers:
        sub["triggers"] = triggers
    return Notifications.model_validate({"sinks": [s], "subscriptions": [sub], "links": LINKS})


def roll(notifier: Notifier, *, error_rate: float = 0.0) -> tuple[MemoryStore, list[float]]:
    """Deploy rA, then roll out rB to its end; the wall time of every cycle."""
    store, target = MemoryStore(), MemoryTarget()
    store.rollouts["sys"] = Rollout.model_validate(ROLLOUT)
    metrics = MemoryMetrics(lambda c, ctx: Sample(value=error_rate, stable=0.01, samples=50))
    cycles: list[float] = []

    def drive(now: float, until: float) -> float:
        while now <= until:
            t0 = time.perf_counter()
            d = reconcile.reconcile_once(
                "sys", store=store, target=target, sources={Provider.BUILTIN: metrics}, now=now,
                notify=notifier.on_decision,
            )  # fmt: skip
            cycles.append(time.perf_counter() - t0)
            now += min(d.requeue_after if d.requeue_after is not None else 1.0, 1.0) or 0.5
        return now

    now = drive(1000.0, 1001.0)
    r = store.rollouts["sys"]
    store.rollouts["sys"] = r.model_copy(update={"spec": r.spec.model_copy(update={"revision": "rB"})})
    drive(now, now + 15)
    return store, cycles


def test_every_transition_reaches_a_webhook_as_a_signed_cloudevent(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HOOK_KEY", "k3y")
    with receiving() as rec:
        n = Notifier(config(rec.url, hmacKey={"env": "HOOK_KEY"}), dead_letter=tmp_path / "dead.jsonl")
        store, _ = roll(n)
        assert n.drain(10)
        n.close()
    assert store.statuses["sys"].phase is Phase.PROMOTED
    types = [r.json()["type"] for r in rec.requests]
    assert types[0] == "dev.cdevents.service.deployed.0.2.0"
    assert "dev.modship.rollout.rolloutstarted.v1" in types and "dev.modship.rollout.analysissuccessful.v1" in types
    assert types[-1] == "dev.cdevents.service.upgraded.0.2.0"
    for r in rec.requests:
        assert r.headers["content-type"].startswith("application/cloudevents+json")
        want = "sha256=" + hmac.new(b"k3y", r.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(r.headers[SIGNATURE_HEADER.lower()], want)
        ev = r.json()
        assert ev["specversion"] == "1.0" and ev["source"] and ev["id"] and ev["subject"] == "sys"
    upgraded = rec.requests[-1].json()["data"]
    assert upgraded["context"]["type"] == "dev.cdevents.service.upgraded.0.2.0"
    assert upgraded["subject"]["content"]["artifactId"] == "pkg:generic/sys@rB"
    details = upgraded["customData"]
    assert details["modules"] == ["topic-head@2"] and details["revision"] == "rB"
    assert details["analysis"]["errors"]["value"] == 0.0 and details["analysis"]["errors"]["stable"] == 0.01
    assert details["links"]["dashboard"] == "http://127.0.0.1:8765/dashboard/#/systems/sys"
    assert details["links"]["mlflow"]["topic-head@2"] == "http://mlflow.example:5000/#/models/topic-head/versions/2"
    assert len({r.json()["id"] for r in rec.requests}) == len(rec.requests)
    assert not (tmp_path / "dead.jsonl").exists()


def test_slack_and_teams_tell_people_what_decided(tmp_path: Path) -> None:
    with receiving() as rec:
        slack = Notifier(config(rec.url, kind="slack", triggers=["aborted"]), dead_letter=tmp_path / "d")
        roll(slack, error_rate=0.5)  # the analysis fails: aborted
        assert slack.drain(10)
        slack.close()
        [msg] = [r.json() for r in rec.wait_for(1)]
        teams = Notifier(config(rec.url, kind="teams", triggers=["aborted"]), dead_letter=tmp_path / "d")
        roll(teams, error_rate=0.5)
        assert teams.drain(10)
        teams.close()
        card = rec.wait_for(2)[1].json()
    text = json.dumps(msg)
    assert msg["text"].startswith("⚠️ sys: AnalysisFailed")
    assert "Check errors" in text and "Failed: 0.5 (stable 0.01)" in text and "topic-head@2" in text
    assert "<http://127.0.0.1:8765/dashboard/#/systems/sys|Dashboard>" in text
    assert "http://mlflow.example:5000/#/models/topic-head/versions/2" in text
    assert card["@type"] == "MessageCard" and card["themeColor"] == "D70000"
    facts = {f["name"]: f["value"] for f in card["sections"][0]["facts"]}
    assert facts["Modules changed"] == "topic-head@2" and facts["Check errors"].startswith("Failed: 0.5")
    assert [a["name"] for a in card["potentialAction"]] == ["Dashboard", "MLflow topic-head@2"]


def test_a_restarted_controller_still_reports_the_values_that_decided(tmp_path: Path) -> None:
    """The analysis step's results leave the status when it completes; what decided is saved with
    the status, so a new controller (a new Notifier, the status read back) reports them."""
    doc = json.loads(json.dumps(ROLLOUT))
    doc["spec"]["strategy"]["canary"]["steps"][2:2] = [{"pause": {"duration": 5}}]
    store, target = MemoryStore(), MemoryTarget()
    store.rollouts["sys"] = Rollout.model_validate(doc)
    metrics = MemoryMetrics(lambda c, ctx: Sample(value=0.0, stable=0.01, samples=50))
    with receiving() as rec:
        first = Notifier(config(rec.url, triggers=["promoted"]), dead_letter=tmp_path / "dead.jsonl")
        notifier, now = first, 1000.0
        for _ in range(40):
            if now == 1002.0:
                r = store.rollouts["sys"]
                store.rollouts["sys"] = r.model_copy(update={"spec": r.spec.model_copy(update={"revision": "rB"})})
            s = store.statuses.get("sys")
            if notifier is first and s is not None and s.step == 2:  # pausing after the analysis: a restart
                first.close()
                store.statuses["sys"] = RolloutStatus.from_storage(json.loads(json.dumps(s.for_storage())))
                assert not store.statuses["sys"].step_analysis  # the step's own results are gone
                notifier = Notifier(config(rec.url, triggers=["promoted"]), dead_letter=tmp_path / "dead.jsonl")
            d = reconcile.reconcile_once(
                "sys", store=store, target=target, sources={Provider.BUILTIN: metrics}, now=now,
                notify=notifier.on_decision,
            )  # fmt: skip
            if d.status.phase is Phase.PROMOTED:
                break
            now += min(d.requeue_after if d.requeue_after is not None else 1.0, 1.0) or 0.5
        assert notifier is not first and store.statuses["sys"].phase is Phase.PROMOTED
        assert notifier.drain(10)
        notifier.close()
    [promoted] = [r.json() for r in rec.requests]
    errors = promoted["data"]["customData"]["analysis"]["errors"]
    assert (errors["value"], errors["stable"], errors["verdict"], errors["successes"]) == (0.0, 0.01, "Successful", 2)


def test_a_failing_receiver_is_retried_with_backoff_until_it_answers(tmp_path: Path) -> None:
    with receiving() as rec:
        rec.fail_first = 2
        n = Notifier(config(rec.url, triggers=["promoted"]), dead_letter=tmp_path / "dead.jsonl")
        roll(n)
        assert n.drain(10)
        n.close()
    assert len(rec.requests) == 3 and rec.requests[-1].json()["type"] == "dev.cdevents.service.upgraded.0.2.0"
    assert [(d.delivered, d.attempts) for d in n.delivered] == [(True, 3)]
    gaps = [b.at - a.at for a, b in zip(rec.requests, rec.requests[1:], strict=False)]
    assert gaps[1] > gaps[0] * 1.5  # exponential: 0.05 s, then 0.1 s
    assert not (tmp_path / "dead.jsonl").exists()


def test_a_receiver_that_is_down_dead_letters_without_revealing_secrets(
    tmp_path: Path, monkeypatch, caplog  # type: ignore[no-untyped-def]
) -> None:  # fmt: skip
    url = down_url() + "?token=SECRET-TOKEN"
    monkeypatch.setenv("HOOK_URL", url)
    dead = tmp_path / "home" / "notifications" / "dead-letter.jsonl"
    caplog.set_level(logging.DEBUG)
    n = Notifier(config({"env": "HOOK_URL"}, triggers=["started", "promoted"]), dead_letter=dead)
    store, _ = roll(n)
    assert store.statuses["sys"].phase is Phase.PROMOTED  # the rollout did not wait for anyone
    assert n.drain(10)
    n.close()
    entries = read_dead_letters(dead)
    assert [e["event"]["type"] for e in entries] == [
        "dev.modship.rollout.rolloutstarted.v1",
        "dev.cdevents.service.upgraded.0.2.0",
    ]
    assert all(e["attempts"] == 3 and e["error"] == "cannot connect (ConnectError)" for e in entries)
    assert stat.S_IMODE(os.stat(dead).st_mode) == 0o600
    assert "SECRET-TOKEN" not in dead.read_text() and "SECRET-TOKEN" not in caplog.text


def test_a_slow_receiver_never_delays_the_rollout(tmp_path: Path) -> None:
    with receiving() as rec:
        rec.delay = 1.0
        n = Notifier(config(rec.url, timeout=0.2, attempts=2), dead_letter=tmp_path / "dead.jsonl")
        t0 = time.perf_counter()
        store, cycles = roll(n)
        took = time.perf_counter() - t0
        assert store.statuses["sys"].phase is Phase.PROMOTED
        # ~10 events, each 2 tries of 0.2 s + backoff: over 4 s if a cycle waited; the cycles took far less
        assert took < 2.0 and max(cycles) < 0.5, (took, max(cycles))
        assert n.drain(30)
        n.close()
    dead = read_dead_letters(tmp_path / "dead.jsonl")
    assert dead and all(e["error"] == "no answer within 0.2s" for e in dead)


def test_a_full_queue_dead_letters_at_once_and_a_missing_secret_is_not_retried(tmp_path: Path) -> None:
    with receiving() as rec:
        rec.delay = 0.5
        cfg = config(rec.url, timeout=2).model_copy(update={"queue": 1})
        n = Notifier(cfg, dead_letter=tmp_path / "dead.jsonl")
        roll(n)
        n.close(timeout=5)
    errors = [e["error"] for e in read_dead_letters(tmp_path / "dead.jsonl")]
    assert errors and all(e == "queue full (1 waiting)" for e in errors)
    n = Notifier(config({"env": "MODSHIP_TEST_UNSET_VARIABLE"}), dead_letter=tmp_path / "d2.jsonl")
    d = n.deliver("hook", n_test_event())
    n.close()
    assert (d.delivered, d.attempts) == (False, 1)
    assert d.error == "sinks.hook.url: environment variable MODSHIP_TEST_UNSET_VARIABLE is not set"


def n_test_event() -> Any:
    from controller.plan import notifications as plan
    from controller.spec.notifications import Links

    return plan.test_event("sys", now=1000.0, links=Links())


def test_notify_test_and_dead_letters_commands(tmp_path: Path) -> None:
    cli = Cli(home=tmp_path / "home", registry=None)
    cli.home.mkdir()
    with receiving() as rec:
        sinks = [
            {"name": "up", "url": rec.url, "hmacKey": {"file": str(tmp_path / "key")}},
            {"name": "down", "url": down_url(), "attempts": 2, "backoff": 0.01},
        ]
        (tmp_path / "key").write_text("k3y\n")
        (cli.home / "notifications.yaml").write_text(json.dumps({"sinks": sinks}))
        assert "delivered to sink up (1 attempt(s)" in cli.ok("notify", "test", "up").out
        [req] = rec.requests
        assert req.json()["type"] == "dev.modship.notification.test.v1"
        assert req.headers[SIGNATURE_HEADER.lower()] == "sha256=" + hmac.new(b"k3y", req.body, "sha256").hexdigest()
    r = cli("notify", "test", "down")
    assert r.code == 6 and "not delivered after 2 attempt(s): cannot connect" in r.err
    assert len(r.err.strip().splitlines()) == 1
    r = cli("notify", "test", "nobody")
    assert r.code == 2 and "no sink 'nobody' (known: up, down)" in r.err
    assert json.loads(cli.ok("notify", "dead-letters", "-o", "json").out) == []
    (cli.home / "notifications.yaml").write_text(json.dumps({"sinks": [{"name": "x", "url": 3}]}))
    r = cli("notify", "test", "x")
    assert r.code == 2 and "sinks[0].url" in r.err and "Traceback" not in r.err


@pytest.mark.parametrize(
    ("subs", "system", "reason", "want"),
    [
        ([{"sinks": ["a"]}], "sys", "Promoted", ["a"]),
        ([{"system": "other", "sinks": ["a"]}], "sys", "Promoted", []),
        ([{"sinks": ["a"], "triggers": ["aborted"]}], "sys", "AnalysisFailed", ["a"]),
        ([{"sinks": ["a"], "triggers": ["aborted"]}], "sys", "Promoted", []),
        ([{"sinks": ["a"], "triggers": ["analysisInconclusive"]}], "sys", "AnalysisInconclusive", ["a"]),
        ([{"sinks": ["a"], "triggers": ["metricsDown"]}], "sys", "MetricsUnavailable", ["a"]),
        ([{"sinks": ["a", "b"]}, {"sinks": ["b"], "triggers": ["promoted"]}], "sys", "Promoted", ["a", "b"]),
    ],
)
def test_subscriptions_route_by_system_and_trigger(subs: list[Any], system: str, reason: str, want: list[str]) -> None:
    from controller.plan import notifications as plan
    from controller.plan.actions import Event
    from controller.plan.reasons import Reason
    from controller.plan.status import RolloutStatus

    cfg = Notifications.model_validate({"sinks": [{"name": "a", "url": "http://x"}, {"name": "b", "url": "http://y"}],
                                        "subscriptions": subs})  # fmt: skip
    trigger = plan.trigger_of(Event(Reason(reason), "m"), RolloutStatus())
    assert plan.sinks_for(cfg, system, trigger) == want


def test_a_subscription_to_an_unknown_sink_is_refused() -> None:
    from controller.errors import SpecError
    from controller.spec import parse

    with pytest.raises(SpecError, match="unknown sink 'b'"):
        parse.to_model(
            Notifications, {"sinks": [{"name": "a", "url": "http://x"}], "subscriptions": [{"sinks": ["b"]}]}
        )
