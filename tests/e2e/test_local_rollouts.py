"""Progressive delivery on one machine, end to end: a real MLflow server, real `bentoml serve`
processes, the real router and the real controller (`modship up`), driven through the CLI."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from controller.adapters import proctree
from tests.conftest import Cli
from tests.support import examples
from tests.support.examples import variant
from tests.support.local import Controller, Load, status
from tests.support.services import free_port, wait_until

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]

ROLLOUT = {
    "apiVersion": "modship.dev/v1alpha1",
    "kind": "Rollout",
    "metadata": {"name": "topic-classifier"},
    "spec": {
        "system": "topic-classifier",
        "strategy": {
            "canary": {
                "steps": [
                    {"setWeight": 20},
                    {"analysis": {"checks": ["error-rate", "fallback-rate"]}},
                    {"setWeight": 50},
                    {"pause": {"duration": "2s"}},
                    {"analysis": {"checks": ["error-rate", "fallback-rate"]}},
                ]
            }
        },
        "analysis": {
            "checks": [
                {
                    "name": "error-rate",
                    "metric": "errorRate",
                    "threshold": {"max": 0.02},
                    "window": "5s",
                    "interval": "1s",
                    "count": 2,
                    "minSamples": 5,
                },
                {
                    "name": "fallback-rate",
                    "metric": "fallbackRate",
                    "threshold": {"max": 0.05, "relativeTo": "stable"},
                    "window": "5s",
                    "interval": "1s",
                    "count": 2,
                    "minSamples": 5,
                },
            ]
        },
        "policies": {"rollbackWindow": "10m", "progressDeadline": "3m"},
    },
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, mlflow_server: Any) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("local")
    cli = Cli(home=tmp / "home", registry=mlflow_server.url)
    root, _ = examples.build()
    cli.ok("module", "register", *[str(root / n) for n in examples.ORDER], "--skip-existing", timeout=900)
    faulty = variant(root / "topic-head-v1", tmp / "head-faulty", faults={"errorRate": 0.5})
    out = json.loads(cli.ok("module", "register", str(faulty), "--skip-existing", "-o", "json").out)
    (tmp / "rollout.yaml").write_text(yaml.safe_dump(ROLLOUT))
    controller = Controller(cli, tmp / "controller.log").start()
    port = free_port()
    system = str(REPO / "examples" / "systems" / "topic-classifier.yaml")
    cli.ok("deploy", system, "--rollout", str(tmp / "rollout.yaml"), "--port", str(port), timeout=600)
    wait_until(lambda: status(cli, "topic-classifier")["traffic"] or None, timeout=120, what="stable serving")
    load = Load(f"http://127.0.0.1:{port}", tmp / "load.json").start()
    yield {
        "cli": cli,
        "controller": controller,
        "load": load,
        "faulty": f"topic-head@{out[0]['version']}",
        "tmp": tmp,
        "port": port,
    }
    load.stop()
    cli("down")
    controller.stop()


def wait_steady(cli: Cli) -> dict[str, Any]:
    return wait_until(
        lambda: (s := status(cli, "topic-classifier"))["phase"] in ("Idle", "Promoted", "Aborted") and s,
        timeout=120,
        what="no rollout in flight",
    )


def events(cli: Cli) -> list[dict[str, Any]]:
    return list(json.loads(cli.ok("events", "topic-classifier", "-o", "json").out))


def test_a_good_version_is_promoted_with_no_failed_requests(stack: dict[str, Any]) -> None:
    cli, load = stack["cli"], stack["load"]
    before = load.stats()["failed"]
    stable = status(cli, "topic-classifier")["stable"]["revision"]
    cli.ok("promote", "topic-classifier", "topic-head@2", timeout=600)
    r = cli("status", "topic-classifier", "--wait", "--timeout", "180", "-o", "json", timeout=240)
    assert r.code == 0, r.out + r.err
    s = json.loads(r.out)
    assert s["phase"] == "Promoted" and s["stable"]["revision"] != stable and s["previousStable"] == stable
    assert "topic-head@2" in s["stable"]["modules"]
    reasons = [e["reason"] for e in events(cli)]
    assert reasons.count("AnalysisSuccessful") >= 2 and "Promoted" in reasons
    assert load.stats()["failed"] == before
    head = json.loads(cli.ok("module", "show", "topic-head@stable", "-o", "json").out)
    assert head["version"] == 2 and "canary" not in head["aliases"]
    by_rev = load.stats()["byRevision"]
    assert by_rev.get(s["stable"]["revision"], 0) > 0


def test_a_failing_version_is_rolled_back_automatically(stack: dict[str, Any]) -> None:
    cli, load = stack["cli"], stack["load"]
    wait_steady(cli)
    stable = status(cli, "topic-classifier")["stable"]["revision"]
    before = load.stats()["failed"]
    cli.ok("promote", "topic-classifier", stack["faulty"], timeout=600)
    r = cli("status", "topic-classifier", "--wait", "--timeout", "180", "-o", "json", timeout=240)
    assert r.code == 1, r.out + r.err
    s = json.loads(r.out)
    assert (s["phase"], s["reason"], s["stable"]["revision"], s["weight"]) == ("Aborted", "AnalysisFailed", stable, 0.0)
    assert load.stats()["failed"] == before  # the faulty head's errors were absorbed by its fallback
    fallback = [m for m in s["analysis"]["step"]["fallback-rate"]["recent"] if m["verdict"] == "Failed"]
    assert fallback and fallback[-1]["value"] > fallback[-1]["stable"] + 0.05
    shown = json.loads(cli.ok("module", "show", stack["faulty"], "-o", "json").out)
    assert "canary" not in shown["aliases"]
    assert s["drift"] and "automatic rollback" in s["drift"][0]  # the spec and what runs differ: said so


def test_the_controller_killed_mid_rollout_resumes_at_the_same_step(stack: dict[str, Any]) -> None:
    cli, load, controller = stack["cli"], stack["load"], stack["controller"]
    wait_steady(cli)
    before = load.stats()["failed"]
    cli.ok("promote", "topic-classifier", "text-encoder@2", "l3-to-l6@1", timeout=600)  # grouped: one revision
    with api_client(cli) as api:  # the API, not the CLI: a CLI process can take longer to start than the pause
        at_pause = wait_until(
            lambda: (
                (s := api.get("/v1/systems/topic-classifier").json())["step"] >= 3 and s["phase"] == "Progressing" and s
            ),
            timeout=180,
            interval=0.05,
            what="the rollout at its pause step",
        )
    controller.kill()
    assert status_file_step(stack) == at_pause["step"] or status_file_step(stack) >= at_pause["step"]
    controller.start()
    r = cli("status", "topic-classifier", "--wait", "--timeout", "180", "-o", "json", timeout=240)
    assert r.code == 0, r.out + r.err
    mods = json.loads(r.out)["stable"]["modules"]
    assert {"text-encoder@2", "l3-to-l6@1"} <= set(mods)
    rollout_events = wait_until(
        lambda: (ev := events(cli))[-1]["reason"] == "Promoted" and ev, timeout=30, what="the Promoted event"
    )  # events follow the status write
    start = max(i for i, e in enumerate(rollout_events) if e["reason"] == "RolloutStarted")
    weights = [e["message"] for e in rollout_events[start:] if e["reason"] == "WeightChanged"]
    assert len(weights) == 2 and "20 %" in weights[0] and "50 %" in weights[1]  # no step repeated, none skipped
    assert [e["reason"] for e in rollout_events[start:]].count("AnalysisSuccessful") == 2
    assert load.stats()["failed"] == before


def api_client(cli: Cli) -> httpx.Client:
    info = json.loads((cli.home / "controller.json").read_text())
    return httpx.Client(base_url=info["url"], headers={"Authorization": f"Bearer {info['token']}"}, timeout=60)


def status_file_step(stack: dict[str, Any]) -> int:
    path = stack["cli"].home / "systems" / "topic-classifier" / "status.json"
    return int(json.loads(path.read_text())["step"])


def test_a_killed_canary_loses_no_client_request(stack: dict[str, Any]) -> None:
    cli, load = stack["cli"], stack["load"]
    wait_steady(cli)
    before = load.stats()
    cli.ok("promote", "topic-classifier", "topic-head@1", timeout=600)
    # watched and paused through the API itself, not the CLI: on a loaded machine a CLI process takes
    # seconds to start, longer than this rollout stays at 20 % (the canary must still be one when killed)
    with api_client(cli) as api:
        s = wait_until(
            lambda: (x := api.get("/v1/systems/topic-classifier").json())["weight"] >= 20 and x,
            timeout=180,
            interval=0.05,
            what="canary taking traffic",
        )
        assert api.post("/v1/systems/topic-classifier/pause", json={"reason": "kill its server"}).status_code == 200
    canary = s["canary"]["revision"]
    assert status(cli, "topic-classifier")["canary"]["revision"] == canary
    members = wait_until(lambda: unit_members(cli, canary), timeout=60, what="the canary's server and worker")
    old = {pid: proctree.start_of(pid) or 0 for pid in members.values()}
    os.kill(members["server"], signal.SIGKILL)  # the worker lives in a session of its own
    wait_until(lambda: load.stats()["requests"] > before["requests"] + 150, timeout=60, what="traffic after the kill")
    after = load.stats()
    assert after["failed"] == before["failed"], after["lastFailures"]
    wait_until(lambda: not any(proctree.same(p, st) for p, st in old.items()), timeout=30, what="no orphaned worker")
    crash = wait_until(
        lambda: status(cli, "topic-classifier")["processes"]["crashes"].get(canary), timeout=30, what="crash reported"
    )
    assert crash["count"] >= 1 and crash["last"]["process"] == "server" and crash["last"]["signal"] == "SIGKILL"
    assert crash["last"]["pid"] == members["server"]
    assert any(e["reason"] == "ProcessCrashed" and canary in e["message"] for e in events(cli))
    table = cli.ok("status", "topic-classifier").out
    assert f"{canary} crashed" in table and "SIGKILL" in table
    url = json.loads((cli.home / "controller.json").read_text())["url"]
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert f'modship_runtime_crashes_total{{process="server",system="topic-classifier",unit="{canary}"}}' in metrics
    cli.ok("resume", "topic-classifier")
    wait_steady(cli)


def at_once(cli: Cli, *requests: tuple[str, dict[str, Any]]) -> list[httpx.Response]:
    """POST each (path, body) to the controller's API from its own thread, released together."""
    info = json.loads((cli.home / "controller.json").read_text())
    url, auth = info["url"], {"Authorization": f"Bearer {info['token']}"}
    gate = threading.Barrier(len(requests))
    answers: list[httpx.Response | None] = [None] * len(requests)

    def send(i: int, path: str, body: dict[str, Any]) -> None:
        with httpx.Client(base_url=url, headers=auth, timeout=600) as http:
            gate.wait()
            answers[i] = http.post(path, json=body)

    threads = [threading.Thread(target=send, args=(i, *rq)) for i, rq in enumerate(requests)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(a is not None for a in answers)
    return [a for a in answers if a is not None]


def test_concurrent_promotes_and_aborts_accept_exactly_one(stack: dict[str, Any]) -> None:
    cli = stack["cli"]
    wait_steady(cli)
    system = yaml.safe_load((REPO / "examples" / "systems" / "topic-classifier.yaml").read_text())

    def promote(budget: int) -> tuple[str, dict[str, Any]]:  # a revision never seen before
        spec = {**system["spec"], "latencyBudgetMs": budget}
        return "/v1/systems/topic-classifier/promote", {"system": {**system, "spec": spec}}

    abort = ("/v1/systems/topic-classifier/abort", {})

    # two promotes at the same moment: one accepted, the other refused naming the rollout in progress
    answers = at_once(cli, promote(251), promote(251))
    assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
    refused = next(a.json() for a in answers if a.status_code == 409)
    assert refused["exitCode"] == 5 and "a rollout of" in refused["error"] and "in progress" in refused["error"]
    accepted = next(a.json() for a in answers if a.status_code == 200)
    assert status(cli, "topic-classifier")["target"] == accepted["revision"]
    rev = accepted["revision"]

    # that rollout in progress: a promote and an abort at the same moment: the abort wins, the promote is refused
    answers = at_once(cli, promote(252), abort)
    assert [a.status_code for a in answers] == [409, 200], [a.text for a in answers]
    assert answers[0].json()["exitCode"] == 5 and f"a rollout of {rev} is in progress" in answers[0].json()["error"]
    s = wait_steady(cli)
    assert (s["phase"], s["reason"], s["canary"]["revision"]) == ("Aborted", "AbortedByUser", rev)

    # nothing in flight: a promote and an abort at the same moment: the promote is accepted, the abort refused
    answers = at_once(cli, promote(253), abort)
    assert [a.status_code for a in answers] == [200, 409], [a.text for a in answers]
    why = answers[1].json()["error"]
    assert answers[1].json()["exitCode"] == 5
    assert "a rollout of a new System spec is in progress" in why or "no rollout in progress" in why, why
    wait_until(lambda: status(cli, "topic-classifier")["phase"] == "Progressing", timeout=60, what="the canary")
    r = cli("promote", "topic-classifier", "topic-head@2")  # the CLI: a conflict exits 5, one line naming it
    assert r.code == 5 and f"a rollout of {answers[0].json()['revision']} is in progress" in r.err, r.err
    assert "Traceback" not in r.err
    cli.ok("abort", "topic-classifier")
    assert wait_steady(cli)["reason"] == "AbortedByUser"
    assert cli("abort", "topic-classifier").code == 5  # nothing left to abort


def unit_members(cli: Cli, revision: str) -> dict[str, int] | None:
    unit = (status(cli, "topic-classifier")["processes"]["units"] or {}).get(revision) or {}
    found = {m["process"]: m["pid"] for m in unit.get("members", [])}
    return found if {"server", "worker"} <= set(found) else None


def test_a_second_controller_is_refused(stack: dict[str, Any]) -> None:
    r = stack["cli"]("up", timeout=60)
    assert r.code == 5
    assert "another controller" in r.err and "topic-classifier" in r.err and "Traceback" not in r.err


def test_the_api_acts_only_for_a_token_never_for_another_site(stack: dict[str, Any]) -> None:
    """No token, a wrong one, or the cross-site text/plain POST any web page could send: refused,
    and the rollout stays exactly as it was. A second user's token makes that user the actor."""
    cli = stack["cli"]
    wait_steady(cli)
    info = json.loads((cli.home / "controller.json").read_text())
    assert os.stat(cli.home / "controller.json").st_mode & 0o777 == 0o600
    assert os.stat(cli.home / "tokens.json").st_mode & 0o777 == 0o600
    assert info["token"] not in (cli.home / "tokens.json").read_text()
    system = yaml.safe_load((REPO / "examples" / "systems" / "topic-classifier.yaml").read_text())
    spec = stack["tmp"] / "auth-system.yaml"
    spec.write_text(yaml.safe_dump({**system, "spec": {**system["spec"], "latencyBudgetMs": 254}}))
    cli.ok("promote", "topic-classifier", "--spec", str(spec), "--reason", "budget 254 ms", timeout=600)
    cli.ok("pause", "topic-classifier", "--reason", "hold while we look")
    before = wait_until(
        lambda: (s := status(cli, "topic-classifier"))["phase"] == "Paused" and s, timeout=120, what="paused"
    )
    url = info["url"]
    for headers in (
        {"Content-Type": "application/json"},  # no token
        {"Content-Type": "application/json", "Authorization": "Bearer mst_not-a-token"},
        {"Content-Type": "text/plain", "Origin": "https://evil.example"},  # what a web page can send
        {"Content-Type": "text/plain", "Origin": "https://evil.example", "Authorization": f"Bearer {info['token']}"},
    ):
        for verb in ("abort", "resume", "promote-full"):
            r = httpx.post(f"{url}/v1/systems/topic-classifier/{verb}", content=b"{}", headers=headers, timeout=10)
            assert r.status_code in (401, 403), (verb, headers, r.status_code, r.text)
            assert info["token"] not in r.text
    assert httpx.get(f"{url}/v1/systems/topic-classifier", timeout=10).status_code == 401
    after = status(cli, "topic-classifier")
    keep = ("phase", "reason", "step", "weight", "paused", "canary")
    assert {k: after[k] for k in keep} == {k: before[k] for k in keep}
    controls = json.loads((cli.home / "systems" / "topic-classifier" / "controls.json").read_text())
    assert controls["abort"] is None and controls["promote_full"] is None and controls["paused"] is True
    # the router's admin API too: any local process can reach its port, only the token holder configures it
    run = cli.home / "systems" / "topic-classifier" / "run"
    assert os.stat(run / "router.token").st_mode & 0o777 == 0o600
    admin = f"http://127.0.0.1:{stack['port']}/-/modship"
    hostile = {
        "system": "topic-classifier",
        "generation": 10**9,
        "stable": {"revision": "x", "url": "http://127.0.0.1:9"},
    }
    assert httpx.put(f"{admin}/config", json=hostile, timeout=10).status_code == 401
    assert httpx.get(f"{admin}/telemetry", timeout=10).status_code == 401
    mine = {"x-modship-token": (run / "router.token").read_text().strip()}
    assert httpx.get(f"{admin}/config", headers=mine, timeout=10).json()["stable"]["revision"] != "x"

    alice = cli.ok("token", "create", "alice").out.strip()
    assert alice.startswith("mst_") and "alice" in cli.ok("token", "list").out
    as_alice = Cli(home=cli.home, registry=cli.registry)
    r = subprocess_cli(as_alice, {"MODSHIP_TOKEN": alice}, "abort", "topic-classifier", "--reason", "p99 too high")
    assert r.returncode == 0, r.stderr
    s = wait_steady(cli)
    assert (s["phase"], s["reason"]) == ("Aborted", "AbortedByUser")
    asked = [e for e in events(cli) if e.get("actor")]
    assert [(e["reason"], e["actor"]["user"], e["actor"]["reason"]) for e in asked[-3:]] == [
        ("PromoteRequested", info["user"], "budget 254 ms"),
        ("PauseRequested", info["user"], "hold while we look"),
        ("AbortRequested", "alice", "p99 too high"),
    ]
    rows = json.loads(cli.ok("history", "topic-classifier", "-o", "json").out)
    mine = next(r for r in rows if r["revision"] == s["canary"]["revision"])
    assert mine["actor"] == {"user": info["user"], "reason": "budget 254 ms"}
    assert mine["outcomes"][-1]["actor"] == {"user": "alice", "reason": "p99 too high"}
    table = cli.ok("history", "topic-classifier").out
    assert 'by alice ("p99 too high")' in table and "budget 254 ms" in table
    assert "alice asked: abort: p99 too high" in cli.ok("events", "topic-classifier").out
    cli.ok("token", "revoke", "alice")
    r = subprocess_cli(as_alice, {"MODSHIP_TOKEN": alice}, "pause", "topic-classifier")
    assert r.returncode == 8 and "valid token" in r.stderr and "Traceback" not in r.stderr
    log = (stack["tmp"] / "controller.log").read_text()
    assert info["token"] not in log and alice not in log


def subprocess_cli(cli: Cli, extra: dict[str, str], *args: str) -> Any:
    import subprocess
    import sys

    modship = str(Path(sys.executable).parent / "modship")
    return subprocess.run([modship, *args], capture_output=True, text=True, env={**cli.env(), **extra}, timeout=300)


def test_a_policy_holds_the_canary_until_another_user_approves(stack: dict[str, Any]) -> None:
    """Governance end to end: a policy set by the owner, a promote refused without the reason it
    requires, the canary held in AwaitingApproval, its author's own approval refused, a second
    user's accepted; the whole story in the hash-chained audit log."""
    cli = stack["cli"]
    wait_steady(cli)
    owner = json.loads((cli.home / "controller.json").read_text())["user"]
    bob = cli.ok("token", "create", "bob").out.strip()
    rule = {"approvers": ["bob", owner], "approvals": 1, "requireReason": True}
    policy = {"apiVersion": "modship.dev/v1alpha1", "kind": "Policy", "spec": {"systems": {"topic-classifier": rule}}}
    (stack["tmp"] / "policy.yaml").write_text(yaml.safe_dump(policy))
    (stack["tmp"] / "no-policy.yaml").write_text(yaml.safe_dump({**policy, "spec": {}}))
    cli.ok("policy", "set", str(stack["tmp"] / "policy.yaml"), "--reason", "four eyes")
    try:
        system = yaml.safe_load((REPO / "examples" / "systems" / "topic-classifier.yaml").read_text())
        spec = stack["tmp"] / "gov-system.yaml"
        spec.write_text(yaml.safe_dump({**system, "spec": {**system["spec"], "latencyBudgetMs": 255}}))
        r = cli("promote", "topic-classifier", "--spec", str(spec))
        assert r.code == 9 and "requires a reason" in r.err and "Traceback" not in r.err, r.err
        cli.ok("promote", "topic-classifier", "--spec", str(spec), "--reason", "budget 255 ms", timeout=600)
        s = wait_until(
            lambda: (x := status(cli, "topic-classifier"))["reason"] == "AwaitingApproval" and x,
            timeout=180,
            what="the canary to await approval",
        )
        assert s["phase"] == "Progressing" and s["weight"] == 50 and s["governance"]["author"] == owner
        r = cli("approve", "topic-classifier", "--reason", "my own change")
        assert r.code == 9 and "cannot approve" in r.err, r.err
        as_bob = Cli(home=cli.home, registry=cli.registry)
        r = subprocess_cli(as_bob, {"MODSHIP_TOKEN": bob}, "approve", "topic-classifier", "--reason", "eval ok")
        assert r.returncode == 0, r.stderr
        r = cli("status", "topic-classifier", "--wait", "--timeout", "120", "-o", "json", timeout=180)
        assert r.code == 0 and json.loads(r.out)["stable"]["revision"] == s["canary"]["revision"], r.out
        assert "AwaitingApproval" in [e["reason"] for e in events(cli)]
    finally:
        cli.ok("policy", "set", str(stack["tmp"] / "no-policy.yaml"), "--reason", "back to no rules")
    entries = json.loads(cli.ok("audit", "-o", "json").out)
    did = [(e["action"], e["actor"], e["reason"]) for e in entries]
    assert ("policy", owner, "four eyes") in did and ("promote", owner, "budget 255 ms") in did
    assert ("approve", "bob", "eval ok") in did
    assert any(a == "promoted" and who == "modship-controller" for a, who, _ in did)
    # the earlier rollouts of this module moved aliases (which ones depends on what other test modules
    # already moved in the shared registry): every move is audited with its before and after
    moves = [e for e in entries if e["action"] == "alias"]
    assert moves and all(e["before"]["alias"] == e["after"]["alias"] and e["before"] != e["after"] for e in moves)
    assert any(e["after"]["alias"] == "canary" and e["after"]["version"] is not None for e in moves)
    assert "intact" in cli.ok("audit", "verify").out
