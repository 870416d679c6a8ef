"""A built Bento, served by real ``bentoml serve``, whose isolated guard segfaults on half of its
inputs: every request is answered, the worker restarts, the crash is counted in ``/metrics``, and
no worker outlives the service."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import Cli
from tests.integration.test_bento_service import metric
from tests.support import examples
from tests.support.isolated import alive, pick
from tests.support.services import BentoServer, wait_until

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SYSTEM = REPO / "examples" / "systems" / "topic-classifier.yaml"
TEXTS = [f"Shares in carmaker number {i} rose after profits beat forecasts." for i in range(100)]
BAD, GOOD = (pick("text-guard", 0.5, crashing=c, texts=TEXTS) for c in (True, False))


def workers_of(pid: int) -> set[int]:
    """Isolated workers among the descendants of ``pid``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X"):
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            try:
                cmd = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"controller.pipeline.worker" in cmd:
                found.add(child)
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BentoServer]:
    tmp = tmp_path_factory.mktemp("bento-isolation")
    cli = Cli(home=tmp / "home", registry=None)  # the embedded registry: the Bento is what is tested
    root, _ = examples.build()
    cli.ok("module", "register", *(str(root / n) for n in examples.ORDER), "--skip-existing", timeout=900)
    faults = {"crash": "segfault", "crashRate": 0.5}
    crashy = examples.variant(root / "text-guard-v1", tmp / "guard-crashy", faults=faults)
    m = yaml.safe_load((crashy / "module.yaml").read_text())
    m["metadata"]["stability"] = "experimental"  # isolated by default
    (crashy / "module.yaml").write_text(yaml.safe_dump(m))
    ref = json.loads(cli.ok("module", "register", str(crashy), "--skip-existing", "-o", "json").out)[0]
    doc = yaml.safe_load(SYSTEM.read_text())
    guard = doc["spec"]["steps"][0]
    guard["module"] = f"{ref['name']}@{ref['version']}"
    guard["fallback"] = {"module": "text-guard@1"}
    doc["spec"]["allowExperimental"] = ["text-guard"]
    doc["metadata"]["name"] = "topic-isolated"
    doc["spec"].pop("smoke")
    (tmp / "isolated.yaml").write_text(yaml.safe_dump(doc))
    tag = json.loads(cli.ok("system", "build", str(tmp / "isolated.yaml"), "-o", "json", timeout=900).out)["bento"]
    s = BentoServer(tag, cli.home / "bentoml", tmp / "isolated.log").start()
    yield s
    s.stop()


def test_a_segfaulting_isolated_module_does_not_stop_the_service(server: BentoServer) -> None:
    assert server.proc is not None
    first = workers_of(server.proc.pid)
    assert len(first) == 1

    r = httpx.post(f"{server.url}/predict", json={"text": BAD}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["meta"]["fallbacks"] == [{"step": "guard", "reason": "error", "used": "text-guard@1"}]
    assert body["prediction"][0]["label"] == "business"
    assert metric(server, "modship_step_errors_total", step="guard", reason="worker_crashed") == 1
    assert metric(server, "modship_step_fallbacks_total", step="guard", reason="error") == 1
    assert "Segmentation fault" in server.log.read_text()

    # the worker was restarted and answers again; the service never stopped
    r = httpx.post(f"{server.url}/predict", json={"text": GOOD}, timeout=60)
    assert r.status_code == 200 and r.json()["meta"]["fallbacks"] == [], r.text
    assert r.json()["meta"]["modules"]["guard"] != "text-guard@1"
    again = workers_of(server.proc.pid)
    assert len(again) == 1 and again != first
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200

    server.stop()
    wait_until(lambda: not any(alive(p) for p in again), timeout=30, what="workers gone with the service")
