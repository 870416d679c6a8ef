"""Analysis against a real Prometheus server (Debian's, 1 s scrape) scraping real bentos; the
server stopped mid-analysis holds the rollout (never promotes); restarted, the rollout completes.

Prometheus is configured with exactly what ``modship prometheus-config`` prints: it finds every
revision, router and the controller through the file the controller publishes (no port is copied
by hand). Every panel of the Helm chart's Grafana dashboard is run against it during a real rollout
(no Grafana can be installed here: its PromQL is what is checked)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Cli
from tests.support import examples
from tests.support.examples import variant
from tests.support.local import Controller, Load, status
from tests.support.prometheus import PrometheusServer
from tests.support.services import free_port, wait_until

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
NAME = "topic-prom"
SD_JOB = "modship-local"
DASHBOARD = REPO / "charts" / "modship" / "dashboards" / "modship-rollouts.json"
_SEL = 'system="{{ system }}",revision="{{ revision }}"'
MODULE_ERRORS = (
    f'(sum(rate(modship_step_fallbacks_total{{{_SEL},reason="error"}}[{{{{ window }}}}])) or vector(0))'
    f" / sum(rate(modship_requests_total{{{_SEL}}}[{{{{ window }}}}]))"
)


def rollout(prometheus: str) -> dict[str, Any]:
    return {
        "apiVersion": "modship.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": NAME},
        "spec": {
            "system": NAME,
            "prometheus": prometheus,
            "strategy": {
                "canary": {"steps": [{"setWeight": 50}, {"analysis": {"checks": ["errors", "module-errors"]}}]}
            },
            "analysis": {
                "checks": [
                    {
                        "name": "errors",
                        "provider": "prometheus",
                        "query": "template:error-rate",
                        "window": "10s",
                        "interval": "1s",
                        "count": 8,
                        "minSamples": 3,
                        "consecutiveErrorLimit": 2,
                        "inconclusiveLimit": 30,  # a restarted Prometheus has a gap: no data for a few seconds
                        "threshold": {"max": 0.05},
                    },
                    {  # module failures the pipeline absorbed by falling back (timeouts under load excluded)
                        "name": "module-errors",
                        "provider": "prometheus",
                        "query": MODULE_ERRORS,
                        "window": "10s",
                        "interval": "1s",
                        "count": 8,
                        "minSamples": 3,
                        "consecutiveErrorLimit": 2,
                        "inconclusiveLimit": 30,
                        "threshold": {"max": 0.1},
                    },
                ]
            },
            "policies": {"metricsDown": "hold", "progressDeadline": "5m"},
        },
    }


def ports(cli: Cli) -> dict[str, int]:
    """The ports the runtime chose (only to check what Prometheus found; never given to it)."""
    path = cli.home / "systems" / NAME / "run" / "runtime.json"
    return {p["revision"]: p["port"] for p in json.loads(path.read_text())["revisions"]}


def found(prom: PrometheusServer) -> dict[tuple[str, str], dict[str, Any]]:
    """Discovered targets by (kind, revision or system), healthy or not."""
    out = {}
    for t in prom.discovered(SD_JOB):
        labels = t["labels"]
        out[(labels["kind"], labels.get("revision") or labels.get("system", ""))] = t
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, mlflow_server: Any) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("prom")
    cli = Cli(home=tmp / "home", registry=mlflow_server.url)
    root, _ = examples.build()
    cli.ok("module", "register", *[str(root / n) for n in examples.ORDER], "--skip-existing", timeout=900)
    doc = yaml.safe_load((REPO / "examples" / "systems" / "topic-classifier.yaml").read_text())
    doc["metadata"]["name"] = NAME
    (tmp / "system.yaml").write_text(yaml.safe_dump(doc))
    faulty = variant(root / "topic-head-v1", tmp / "head-faulty", faults={"errorRate": 0.5})
    out = json.loads(cli.ok("module", "register", str(faulty), "--skip-existing", "-o", "json").out)
    config = yaml.safe_load(cli.ok("prometheus-config", "--interval", "1s", "--job", SD_JOB).out)
    prom = PrometheusServer(root=tmp / "prometheus", scrape_configs=config["scrape_configs"])
    (tmp / "rollout.yaml").write_text(yaml.safe_dump(rollout(prom.url)))
    controller = Controller(cli, tmp / "controller.log").start()
    prom.start()  # after the controller: the targets file exists (else Prometheus looks again within 5 s)
    port = free_port()
    cli.ok("deploy", str(tmp / "system.yaml"), "--rollout", str(tmp / "rollout.yaml"), "--port", str(port), timeout=600)
    wait_until(lambda: status(cli, NAME)["traffic"] or None, timeout=120, what="stable serving")
    load = Load(f"http://127.0.0.1:{port}", tmp / "load.json").start()
    yield {"cli": cli, "prom": prom, "load": load, "faulty": f"topic-head@{out[0]['version']}", "tmp": tmp}
    load.stop()
    cli("down")
    controller.stop()
    prom.close()


def test_prometheus_finds_every_unit_through_the_published_file(stack: dict[str, Any]) -> None:
    cli, prom = stack["cli"], stack["prom"]
    sd = cli.home / "prometheus" / "targets.json"
    stable = status(cli, NAME)["stable"]["revision"]
    api = json.loads((cli.home / "controller.json").read_text())["url"].removeprefix("http://")
    router = status(cli, NAME)["router"]

    def all_up() -> dict[tuple[str, str], dict[str, Any]] | None:
        got = found(prom)
        want = {("controller", ""), ("router", NAME), ("service", stable)}
        return got if want <= set(got) and all(got[k]["health"] == "up" for k in want) else None

    got = wait_until(all_up, timeout=30, what="controller, router and stable discovered and scraped")
    assert got[("service", stable)]["labels"] | {"instance": ""} == {
        "job": SD_JOB, "instance": "", "kind": "service", "system": NAME, "revision": stable, "role": "stable",
    }  # fmt: skip
    assert got[("service", stable)]["scrapeUrl"] == f"http://127.0.0.1:{ports(cli)[stable]}/metrics"
    assert got[("router", NAME)]["scrapeUrl"] == f"{router}/metrics"
    assert got[("controller", "")]["scrapeUrl"] == f"http://{api}/metrics"
    assert json.loads(sd.read_text()) and not list(sd.parent.glob(".*.tmp"))  # written atomically
    # the services' own labels win (honor_labels): one system/revision label, no exported_ copies
    series = prom.api("series", **{"match[]": f'modship_requests_total{{job="{SD_JOB}"}}'})
    assert series and all("exported_system" not in x and x["revision"] == stable for x in series)
    prom.wait_for_value(f'sum(up{{job="{SD_JOB}"}})', until=lambda v: v >= 3)


def test_prometheus_down_mid_analysis_holds_and_never_promotes(stack: dict[str, Any]) -> None:
    cli, prom, load = stack["cli"], stack["prom"], stack["load"]
    cli.ok("promote", NAME, "topic-head@2", timeout=600)
    canary = wait_until(
        lambda: (s := status(cli, NAME))["canary"] and s["canary"]["revision"], timeout=120, what="a canary"
    )
    wait_until(lambda: canary in ports(cli), timeout=60, what="the canary process")
    t = wait_until(lambda: found(prom).get(("service", canary)), timeout=30, what="the canary discovered")
    assert t["labels"]["role"] == "canary" and t["scrapeUrl"] == f"http://127.0.0.1:{ports(cli)[canary]}/metrics"

    def measured_ok() -> bool:
        runs = status(cli, NAME)["analysis"]["step"]
        return bool(runs.get("errors", {}).get("successes", 0) >= 1)

    wait_until(measured_ok, timeout=120, what="a successful Prometheus measurement")
    prom.stop()
    held = wait_until(
        lambda: (s := status(cli, NAME))["reason"] == "MetricsUnavailable" and s, timeout=30, what="the rollout holding"
    )
    assert held["phase"] == "Progressing" and held["weight"] == 50
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # holding: weight and phase do not move while Prometheus is down
        s = status(cli, NAME)
        assert s["phase"] == "Progressing" and s["canary"]["revision"] == canary and s["weight"] == 50
        time.sleep(0.5)
    errors = [m for m in s["analysis"]["step"]["errors"]["recent"] if m["verdict"] == "Error"]
    assert errors and "prometheus" in (errors[-1]["error"] or "").lower()
    prom.start()
    r = cli("status", NAME, "--wait", "--timeout", "180", "-o", "json", timeout=240)
    assert r.code == 0, r.out + r.err
    assert json.loads(r.out)["stable"]["revision"] == canary
    assert load.stats()["failed"] == 0


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the chart's dashboard, rows included."""
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            out.extend((p["title"], t["expr"]) for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return out


def as_grafana_sends(expr: str, *, range_s: int) -> str:
    """The query Grafana runs with every variable at "All" (allValue ``.*``); ``$__rate_interval``
    as Grafana computes it for a data source at its default 15 s scrape interval (4 x 15 s)."""
    for var, value in (
        ("$__rate_interval", "60s"),
        ("$__range", f"{range_s}s"),
        ("$namespace", ".*"),
        ("$system", ".*"),
    ):
        expr = expr.replace(var, value)
    assert "$" not in expr, expr
    return expr


def test_every_panel_of_the_chart_dashboard_returns_data_during_a_rollout(stack: dict[str, Any]) -> None:
    cli, prom = stack["cli"], stack["prom"]
    wait_until(lambda: status(cli, NAME)["phase"] in ("Idle", "Promoted"), timeout=120, what="no rollout in flight")
    doc = yaml.safe_load((stack["tmp"] / "system.yaml").read_text())
    (stack["tmp"] / "system-2.yaml").write_text(
        yaml.safe_dump({**doc, "spec": {**doc["spec"], "latencyBudgetMs": 254}})
    )
    cli.ok("promote", NAME, "--spec", str(stack["tmp"] / "system-2.yaml"), timeout=600)
    canary = wait_until(
        lambda: (s := status(cli, NAME))["canary"] and s["weight"] == 50 and s["canary"]["revision"],
        timeout=120,
        what="a canary in flight at 50 %",
    )
    wait_until(lambda: found(prom).get(("service", canary)), timeout=30, what="the canary discovered")
    cli.ok("pause", NAME, "--reason", "hold it while the dashboard is checked")
    try:
        queries = panel_queries()
        assert len(queries) >= 10 and len({t for t, _ in queries}) >= 9

        def empty() -> list[str]:
            return [
                f"{t}: {q}" for t, q in queries if not prom.query_range(as_grafana_sends(q, range_s=300), seconds=300)
            ]

        missing: list[str] = []

        def all_have_data() -> bool:
            missing[:] = empty()
            return not missing

        try:
            wait_until(all_have_data, timeout=60, interval=1.0, what="data in every panel")
        except Exception:
            raise AssertionError(f"panels without data: {missing}") from None
        # the rollout in flight is what the panels show: its weight, its canary's traffic (polled: a rate
        # needs two scrapes of the canary, which may not have happened yet when the other panels had data)
        seen: dict[str, Any] = {}

        def shows_the_canary() -> bool:
            q = dict(queries)
            seen["weight"] = prom.query_range(as_grafana_sends(q["Canary weight over time"], range_s=300), seconds=30)
            seen["rate"] = prom.query_range(as_grafana_sends(q["Request rate per revision"], range_s=300), seconds=30)
            at_50 = any(float(v) == 50.0 for x in seen["weight"] for _, v in x["values"])
            return at_50 and canary in {x["metric"].get("revision") for x in seen["rate"]}

        try:
            wait_until(shows_the_canary, timeout=60, interval=1.0, what="the canary at 50 % in the panels")
        except TimeoutError:
            raise AssertionError(f"the panels do not show the canary {canary} at 50 %: {seen}") from None
        systems = prom.api("label/system/values", **{"match[]": "modship_requests_total"})  # the $system variable
        assert NAME in systems
    finally:  # the next test needs the rollout moving again, whatever happened here
        cli.ok("resume", NAME)
    r = cli("status", NAME, "--wait", "--timeout", "180", "-o", "json", timeout=240)
    assert r.code == 0, r.out + r.err


def test_an_aborted_canary_says_why_in_the_terminal_and_on_the_dashboard(stack: dict[str, Any]) -> None:
    cli, prom = stack["cli"], stack["prom"]
    wait_until(lambda: status(cli, NAME)["phase"] in ("Idle", "Promoted"), timeout=240, what="no rollout in flight")
    cli.ok("promote", NAME, stack["faulty"], timeout=600)
    r = cli("status", NAME, "--wait", "--timeout", "180", "-o", "json", timeout=240)
    assert r.code == 1, r.out + r.err
    s = json.loads(r.out)
    why = s["aborted"]
    assert (s["reason"], why["reason"], why["check"], why["threshold"]) == (
        "AnalysisFailed", "AnalysisFailed", "module-errors", {"max": 0.1},
    )  # fmt: skip
    m = why["measurement"]
    assert m["verdict"] == "Failed" and m["samples"] >= 3 and m["compared"] == m["value"] > 0.1
    assert why["sentence"].startswith("Aborted because check module-errors (analysis) failed: 1 failing measurement")
    assert f"the last: canary {m['value']:.4g}, above max 0.1 ({m['samples']} samples)." in why["sentence"]
    table = cli.ok("status", NAME).out
    assert "✗ Aborted because check module-errors" in table
    checks = cli.ok("status", NAME, "--checks").out
    assert "module-errors (step): max 0.1 — Failed" in checks and "measures (sum(rate(modship_step_fallbacks" in checks
    assert "errors (step): max 0.05" in checks and "measures template:error-rate" in checks
    rows = [line for line in checks.splitlines() if line.strip().endswith("Failed")]
    assert rows and f"{m['value']:.4g}" in rows[-1]
    # the dashboard: a rollback counted, and the failed verdict behind it
    rollbacks = dict(panel_queries())["Automatic rollbacks"]
    prom.wait_for_value(as_grafana_sends(rollbacks, range_s=600), until=lambda v: v >= 1, timeout=30)
    verdicts = dict(panel_queries())["Verdicts in range"]
    series = prom.query_range(as_grafana_sends(verdicts, range_s=600), seconds=30)
    failed = [x for x in series if x["metric"] == {"check": "module-errors", "verdict": "Failed"}]
    assert failed and float(failed[0]["values"][-1][1]) >= 1, series
