"""GitOps: rendered manifests, ``promote --gitops`` edits and drift between Git and the cluster."""

from __future__ import annotations

import datetime as dt
import difflib
import json
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from controller.apply import gitops
from controller.compose import revision, validate
from controller.entrypoints import cli_gitops
from controller.errors import SpecError
from controller.spec import rollout as rollouts
from controller.spec import system as system_spec
from controller.spec import wire
from tests.support import modules

REPO = Path(__file__).resolve().parents[2]
SYSTEM = REPO / "examples" / "systems" / "topic-classifier.yaml"
ROLLOUT = REPO / "examples" / "rollouts" / "topic-classifier.yaml"
IMAGE = "registry.example.com/topic-classifier"
REV = "r0123456789ab"
OLD = "r111111111111"
TODAY = dt.date(2026, 1, 1)

app = typer.Typer()
app.command()(cli_gitops.render)


@app.callback()
def _root() -> None:
    """A one-command app, so the test drives the real option parsing."""


def render(*args: str) -> None:
    result = CliRunner().invoke(app, ["render", *args], catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output


def render_example(out: Path, *extra: str) -> None:
    render(str(SYSTEM), "--rollout", str(ROLLOUT), "--out", str(out), "--image", IMAGE, *extra)


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# -- render -------------------------------------------------------------------------------------------


def test_render_writes_every_object_and_a_kustomization_listing_them(tmp_path: Path) -> None:
    out = tmp_path / "deploy"
    render_example(
        out, "--namespace", "ml", "--traffic", "gateway-api", "--http-route", "topics", "--gateway", "infra/web"
    )
    names = set(files(out))
    assert names == {"kustomization.yaml", "rollout.yaml", "configmap.yaml", "httproute.yaml"}
    kust = load(out / "kustomization.yaml")
    assert kust["kind"] == "Kustomization" and kust["namespace"] == "ml"
    assert kust["resources"] == sorted(names - {"kustomization.yaml"})
    kinds = {}
    for name in kust["resources"]:
        doc = load(out / name)
        assert doc["metadata"]["namespace"] == "ml", name
        kinds[doc["kind"]] = doc
    assert set(kinds) == {"Rollout", "ConfigMap", "HTTPRoute"}  # the operator creates the Services

    cr = kinds["Rollout"]
    parsed = wire.parse_rollout(cr)  # the rendered CR is a valid Rollout spec
    assert parsed.spec.workload is not None and parsed.spec.workload.image == IMAGE
    assert cr["spec"]["trafficRouting"] == {"gatewayAPI": {"httpRoute": "topics"}}
    # durations stay human strings (the CRD types them int-or-string), weights stay integers
    source = load(ROLLOUT)["spec"]
    window, source_window = cr["spec"]["analysis"]["checks"][0]["window"], source["analysis"]["checks"][0]["window"]
    assert isinstance(window, str) and rollouts.seconds(window) == rollouts.seconds(source_window)
    deadline = cr["spec"]["policies"]["progressDeadline"]
    assert isinstance(deadline, str) and rollouts.seconds(deadline) == rollouts.seconds(
        source["policies"]["progressDeadline"]
    )
    weights = [s for s in source["strategy"]["canary"]["steps"] if "setWeight" in s]
    assert weights and all(w in cr["spec"]["strategy"]["canary"]["steps"] for w in weights)

    route = kinds["HTTPRoute"]
    assert route["metadata"]["name"] == "topics"
    assert route["spec"]["parentRefs"] == [{"name": "web", "namespace": "infra"}]
    # at rest: everything to the operator's stable Service, on the workload's port
    assert route["spec"]["rules"] == [
        {"backendRefs": [{"name": "topic-classifier-stable", "port": 3000, "weight": 100}]}
    ]
    assert route["metadata"]["annotations"] == {"kustomize.toolkit.fluxcd.io/ssa": "IfNotPresent"}
    system = yaml.safe_load(load(out / "configmap.yaml")["data"]["system.yaml"])
    assert system["kind"] == "System" and system["metadata"]["name"] == "topic-classifier"
    assert system["spec"]["steps"][1]["module"] == "text-encoder@1"


def test_render_is_deterministic(tmp_path: Path) -> None:
    args = ("--namespace", "ml", "--traffic", "istio", "--host", "topics.example.com")
    render_example(tmp_path / "a", *args)
    render_example(tmp_path / "b", *args)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    before = files(tmp_path / "a")
    render_example(tmp_path / "a", *args)
    assert files(tmp_path / "a") == before


@pytest.mark.parametrize(
    ("traffic", "route_file", "kind", "routing"),
    [
        ("istio", "virtualservice.yaml", "VirtualService", {"istio": {"virtualService": "topic-classifier"}}),
        ("nginx", "ingress.yaml", "Ingress", {"nginx": {"ingress": "topic-classifier"}}),
    ],
)
def test_render_traffic_skeletons(tmp_path: Path, traffic: str, route_file: str, kind: str, routing: Any) -> None:
    render_example(tmp_path, "--traffic", traffic)
    doc = load(tmp_path / route_file)
    assert doc["kind"] == kind and "namespace" not in doc["metadata"]
    assert load(tmp_path / "rollout.yaml")["spec"]["trafficRouting"] == routing
    assert "namespace" not in load(tmp_path / "kustomization.yaml")


def test_render_says_which_checks_the_traffic_provider_cannot_serve(tmp_path: Path) -> None:
    args = [str(SYSTEM), "--rollout", str(ROLLOUT), "--out", str(tmp_path), "--image", IMAGE]
    result = CliRunner().invoke(app, ["render", *args, "--traffic", "gateway-api", "-o", "json"])
    assert result.exit_code == 0, result.output
    warnings = {w["field"]: w for w in json.loads(result.output)["warnings"]}
    checks = [c["name"] for c in load(tmp_path / "rollout.yaml")["spec"]["analysis"]["checks"]]
    dis = warnings[f"spec.analysis.checks[{checks.index('disagreement')}]"]
    assert dis["needs"] == "answerComparison"
    assert "Gateway API mirrors requests but drops the mirrored answers" in dis["message"]
    err = warnings[f"spec.analysis.checks[{checks.index('error-rate')}]"]
    assert "measure it with provider prometheus" in err["message"]
    table = CliRunner().invoke(app, ["render", *args, "--traffic", "nginx"])
    assert table.exit_code == 0, table.output
    assert "warning spec.strategy.canary.steps[0].setMirror: step 0 setMirror: NGINX Ingress cannot mirror" in (
        table.output
    )


def test_route_skeletons_are_what_the_operator_writes_at_rest(tmp_path: Path) -> None:
    """The operator rewrites the router object: the rendered skeleton must be something it accepts,
    and at rest (no canary) exactly what it would write, so Argo CD sees no diff between rollouts."""
    from controller.adapters.kube import gateway, istio, names, nginx, traffic

    system, idle, canary = "topic-classifier", traffic.Split("r1", None), traffic.Split("r1", "r2", 20.0)
    render_example(tmp_path / "gw", "--traffic", "gateway-api")
    rules = load(tmp_path / "gw" / "httproute.yaml")["spec"]["rules"]
    assert gateway.gateway_rules(rules, system=system, split=idle, port=3000, mirror_percent=True) == rules
    split = gateway.gateway_rules(rules, system=system, split=canary, port=3000, mirror_percent=True)
    assert split is not None
    assert [(b["name"], b["weight"]) for b in split[0]["backendRefs"]] == [
        (f"{system}-stable", 80),
        (f"{system}-canary", 20),
    ]

    render_example(tmp_path / "istio", "--traffic", "istio")
    http = load(tmp_path / "istio" / "virtualservice.yaml")["spec"]["http"]
    assert istio.istio_http(http, system=system, split=idle) == http
    split = istio.istio_http(http, system=system, split=canary)
    assert split is not None and [d["weight"] for d in split[0]["route"]] == [80, 20]

    render_example(tmp_path / "nginx", "--traffic", "nginx", "--host", "topics.example.com")
    ingress = load(tmp_path / "nginx" / "ingress.yaml")
    twin = nginx.nginx_canary(ingress, system=system, split=canary, owner=names.Owner(system, "ml", "uid-1"))
    assert twin["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"] == {
        "name": f"{system}-canary",
        "port": {"number": 3000},
    }


def test_render_without_traffic_and_stale_files(tmp_path: Path) -> None:
    render_example(tmp_path, "--traffic", "gateway-api")
    (tmp_path / "notes.yaml").write_text("kept: true\n")  # not ours: never touched
    render_example(tmp_path)
    assert set(files(tmp_path)) == {"kustomization.yaml", "rollout.yaml", "configmap.yaml", "notes.yaml"}
    assert "trafficRouting" not in load(tmp_path / "rollout.yaml")["spec"]
    assert load(tmp_path / "kustomization.yaml")["resources"] == ["configmap.yaml", "rollout.yaml"]


def test_render_a_system_alone_gets_a_default_canary(tmp_path: Path) -> None:
    render(str(SYSTEM), "--out", str(tmp_path), "--image", "registry.example.com/topic:{revision}")
    cr = rollouts.from_document(load(tmp_path / "rollout.yaml"))
    assert cr.name == "topic-classifier" and cr.spec.system == "topic-classifier"
    assert [s.kind for s in cr.steps] == ["setWeight", "pause", "setWeight", "pause"]
    assert cr.spec.workload is not None and cr.spec.workload.image_for(REV) == f"registry.example.com/topic:{REV}"


def test_render_a_rollout_target(tmp_path: Path) -> None:
    render(str(ROLLOUT), "--out", str(tmp_path), "--image", IMAGE, "--system", str(SYSTEM))
    assert set(files(tmp_path)) == {"kustomization.yaml", "rollout.yaml", "configmap.yaml"}
    render(str(ROLLOUT), "--out", str(tmp_path / "bare"), "--image", IMAGE)
    assert set(files(tmp_path / "bare")) == {"kustomization.yaml", "rollout.yaml"}


def test_render_a_lock_pins_the_revision(tmp_path: Path) -> None:
    versions = modules.versions()
    system = system_spec.from_document(modules.system_doc(modules.STANDARD_STEPS))
    lock = revision.pin(system, validate.check(system, versions.__getitem__, today=TODAY).resolved)
    revision.write(lock, tmp_path / "sys.lock.yaml")
    render(str(tmp_path / "sys.lock.yaml"), "--out", str(tmp_path / "out"), "--image", IMAGE)
    cr = load(tmp_path / "out" / "rollout.yaml")
    assert cr["metadata"]["name"] == "sys" and cr["spec"]["revision"] == lock.revision
    cm = load(tmp_path / "out" / "configmap.yaml")
    assert cm["metadata"]["labels"]["modship.dev/revision"] == lock.revision
    assert revision.is_lock(yaml.safe_load(cm["data"]["lock.yaml"]))
    assert yaml.safe_load(cm["data"]["system.yaml"])["spec"]["steps"][1]["module"] == "enc@1"


def test_render_keeps_the_wire_spelling_of_traffic_routing(tmp_path: Path) -> None:
    doc = load(ROLLOUT)
    doc["spec"]["trafficRouting"] = {"gatewayAPI": {"httpRoute": "topics"}}  # as the CRD spells it
    doc["spec"]["workload"] = {"image": IMAGE, "replicas": 3}
    src = tmp_path / "rollout-in.yaml"
    src.write_text(yaml.safe_dump(doc))
    render(str(src), "--out", str(tmp_path / "out"))
    spec = load(tmp_path / "out" / "rollout.yaml")["spec"]
    assert spec["trafficRouting"] == {"gatewayAPI": {"httpRoute": "topics"}}
    assert spec["workload"] == {"image": IMAGE, "replicas": 3}
    assert wire.parse_rollout(load(tmp_path / "out" / "rollout.yaml")).spec.traffic_routing is not None


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((str(ROLLOUT),), "--image"),  # no workload in the spec and no --image
        ((str(ROLLOUT), "--image", IMAGE, "--namespace", "Bad_NS"), "--namespace"),
        ((str(ROLLOUT), "--image", IMAGE, "--http-route", "x"), "--http-route"),
        ((str(ROLLOUT), "--image", IMAGE, "--rollout", str(ROLLOUT)), "--rollout"),
        ((str(SYSTEM), "--image", IMAGE, "--traffic", "gateway-api", "--http-route", "No"), "--http-route"),
    ],
)
def test_render_refuses_bad_input_and_writes_nothing(tmp_path: Path, args: tuple[str, ...], field: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(SpecError) as err:
        render(*args, "--out", str(out))
    assert err.value.field == field
    assert not out.exists()


def test_render_refuses_a_rollout_for_another_system(tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    doc = load(ROLLOUT)
    doc["spec"]["system"] = "sentiment"
    other.write_text(yaml.safe_dump(doc))
    with pytest.raises(SpecError, match="delivers system 'sentiment'"):
        render(str(SYSTEM), "--rollout", str(other), "--out", str(tmp_path / "out"), "--image", IMAGE)


# -- promote --gitops ---------------------------------------------------------------------------------

HAND_WRITTEN = """\
# Our canary for topics; reviewed by the ML platform team.
apiVersion: modship.dev/v1alpha1
kind: Rollout
metadata:
  name: topics   # the CR name differs from the system's
spec:
  system: topic-classifier
  revision: r111111111111   # set by modship promote --gitops
  modules:
  - text-encoder@1
  - topic-head@1
  workload: {image: "registry.example.com/topic", replicas: 3}
  strategy:
    canary:
      steps:
        - setWeight: 20     # a fifth of the traffic first
        - pause: {duration: 30s}
"""


def changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    diff = list(difflib.ndiff(before.splitlines(), after.splitlines()))
    return [d[2:] for d in diff if d.startswith("- ")], [d[2:] for d in diff if d.startswith("+ ")]


def test_promote_gitops_inserts_only_the_revision_fields(tmp_path: Path) -> None:
    render_example(tmp_path, "--traffic", "gateway-api")
    before = {name: data.decode() for name, data in files(tmp_path).items()}
    path = gitops.promote_gitops(tmp_path, "topic-classifier", REV, ["text-encoder@2", "text-adapter@1"])
    assert path == tmp_path / "rollout.yaml"
    after = path.read_text()
    removed, added = changed_lines(before["rollout.yaml"], after)
    assert removed == []
    assert added == [f"  revision: {REV}", "  modules: [text-encoder@2, text-adapter@1]"]
    spec = load(path)["spec"]
    assert spec["revision"] == REV and spec["modules"] == ["text-encoder@2", "text-adapter@1"]
    # nothing else in the tree moved
    assert {n: d.decode() for n, d in files(tmp_path).items() if n != "rollout.yaml"} == {
        n: d for n, d in before.items() if n != "rollout.yaml"
    }
    # promoting again replaces the values in place
    gitops.promote_gitops(tmp_path, "topic-classifier", OLD, ["text-encoder@3"])
    removed, added = changed_lines(after, path.read_text())
    assert removed == [f"  revision: {REV}", "  modules: [text-encoder@2, text-adapter@1]"]
    assert added == [f"  revision: {OLD}", "  modules: [text-encoder@3]"]


def test_promote_gitops_keeps_comments_and_block_style(tmp_path: Path) -> None:
    path = tmp_path / "rollout.yaml"
    path.write_text(HAND_WRITTEN)
    gitops.promote_gitops(tmp_path, "topic-classifier", REV, ["text-encoder@2", "text-adapter@1", "topic-head@1"])
    expected = HAND_WRITTEN.replace("revision: r111111111111 ", f"revision: {REV} ").replace(
        "  - text-encoder@1\n  - topic-head@1\n", "  - text-encoder@2\n  - text-adapter@1\n  - topic-head@1\n"
    )
    assert path.read_text() == expected
    # to no modules at all: the block sequence becomes []
    gitops.promote_gitops(tmp_path, "topic-classifier", OLD, [])
    text = path.read_text()
    assert "  modules: []\n  workload:" in text
    assert text.startswith("# Our canary for topics") and "# a fifth of the traffic first" in text
    assert load(path)["spec"]["modules"] == [] and load(path)["spec"]["workload"]["replicas"] == 3


def test_promote_gitops_rewrites_a_flow_style_spec(tmp_path: Path) -> None:
    doc = load(ROLLOUT)
    doc["spec"]["workload"] = {"image": IMAGE}
    path = tmp_path / "topic-classifier" / "rollout.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(doc, default_flow_style=True))
    assert gitops.promote_gitops(tmp_path, "topic-classifier", REV, ["text-encoder@2"]) == path
    edited = load(path)
    assert edited["spec"] == {**doc["spec"], "revision": REV, "modules": ["text-encoder@2"]}
    assert rollouts.from_document(edited).spec.revision == REV


@pytest.mark.parametrize(
    ("content", "system", "revision", "modules", "match"),
    [
        (None, "topic-classifier", REV, [], "no Rollout manifest for system 'topic-classifier'"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "topic-classifier", REV, [], "not a Rollout"),
        ("a: [unclosed\n", "topic-classifier", REV, [], "invalid YAML"),
        (HAND_WRITTEN, "sentiment", REV, [], "delivers system 'topic-classifier', not 'sentiment'"),
        (HAND_WRITTEN, "topic-classifier", "latest", [], "not a revision id"),
        (HAND_WRITTEN, "topic-classifier", REV, ["Text Encoder@2"], "invalid module name"),
        (HAND_WRITTEN, "topic-classifier", REV, ["text-encoder"], "needs a version or alias"),
    ],
)
def test_promote_gitops_refuses(
    tmp_path: Path, content: str | None, system: str, revision: str, modules: list[str], match: str
) -> None:
    path = tmp_path / "rollout.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SpecError, match=match):
        gitops.promote_gitops(tmp_path, system, revision, modules)
    if content is not None:
        assert path.read_text() == content  # nothing half-written


# -- drift ----------------------------------------------------------------------------------------------


@pytest.fixture
def git_dir(tmp_path: Path) -> Path:
    render_example(tmp_path, "--namespace", "ml")
    gitops.promote_gitops(tmp_path, "topic-classifier", REV, ["text-encoder@2"])
    return tmp_path


def live(git_dir: Path, **status: Any) -> dict[str, Any]:
    cr = load(git_dir / "rollout.yaml")
    cr["metadata"]["uid"] = "1234"  # server-side fields are not drift
    cr["status"] = status
    return cr


def test_no_drift_while_in_sync_or_on_the_way(git_dir: Path) -> None:
    assert gitops.drift(git_dir, live(git_dir, phase="Promoted", stableRevision=REV)) == []
    progressing = live(git_dir, phase="Progressing", stableRevision=OLD, canaryRevision=REV, step=2)
    assert gitops.drift(git_dir, progressing) == []


def test_drift_after_an_automatic_rollback(git_dir: Path) -> None:
    cr = live(
        git_dir,
        phase="Aborted",
        stableRevision=OLD,
        canaryRevision=REV,
        reason="AnalysisFailed",
        message="step 4 analysis failed",
    )
    assert gitops.drift(git_dir, cr) == [
        f"Git asks for {REV}, the cluster runs {OLD} after an automatic rollback "
        "(reason AnalysisFailed: step 4 analysis failed)"
    ]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (
            {"phase": "Aborted", "stableRevision": OLD, "canaryRevision": REV, "reason": "AbortedByUser"},
            f"Git asks for {REV}, the cluster runs {OLD}: the rollout was aborted by a user (reason AbortedByUser)",
        ),
        (
            {"phase": "Idle", "stableRevision": OLD, "reason": "RolledBack", "message": f"rolled back to {OLD}"},
            f"Git asks for {REV}, the cluster runs {OLD} after a manual rollback (modship undo)",
        ),
        (
            {},
            f"Git asks for {REV}, the cluster runs no stable revision (phase unknown): "
            f"the operator has not started {REV} yet",
        ),
    ],
)
def test_drift_in_what_runs(git_dir: Path, status: dict[str, Any], expected: str) -> None:
    assert gitops.drift(git_dir, live(git_dir, **status)) == [expected]


def test_drift_in_the_spec(git_dir: Path) -> None:
    cr = live(git_dir, phase="Promoted", stableRevision=REV)
    steps = cr["spec"]["strategy"]["canary"]["steps"]
    i = next(i for i, s in enumerate(steps) if "setWeight" in s)
    was = steps[i]["setWeight"]
    cr["spec"]["paused"] = True
    steps[i]["setWeight"] = was + 5
    policies = cr["spec"]["policies"]  # the same durations written as seconds: not drift
    policies["rollbackWindow"] = rollouts.seconds(policies["rollbackWindow"])
    assert gitops.drift(git_dir, cr) == [
        "spec.paused: Git has (unset), the cluster has true",
        f"spec.strategy.canary.steps[{i}].setWeight: Git has {was}, the cluster has {was + 5}",
    ]
