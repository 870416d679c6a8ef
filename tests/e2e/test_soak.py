"""The soak, short form (CI): steady traffic while the canary's server or worker, the router or the
controller is SIGKILLed at random; nothing may leak. The long form (200+ crashes) is ``python -m
bench soak``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Cli
from tests.support import examples, soak
from tests.support.local import Controller, Load, status
from tests.support.services import free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.soak]
REPO = Path(__file__).resolve().parents[2]
CRASHES = int(os.environ.get("MODSHIP_SOAK_CRASHES", "5"))


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, mlflow_server: Any) -> Iterator[soak.Soak]:
    tmp = tmp_path_factory.mktemp("soak")
    cli = Cli(home=tmp / "home", registry=mlflow_server.url)
    root, _ = examples.build()
    cli.ok("module", "register", *[str(root / n) for n in examples.ORDER], "--skip-existing", timeout=900)
    (tmp / "rollout.yaml").write_text(yaml.safe_dump(soak.ROLLOUT))
    controller = Controller(cli, tmp / "controller.log").start()
    port = free_port()
    spec = str(REPO / "examples" / "systems" / "topic-classifier.yaml")
    cli.ok("deploy", spec, "--rollout", str(tmp / "rollout.yaml"), "--port", str(port), timeout=600)
    wait_until(lambda: status(cli, soak.SYSTEM)["traffic"] or None, timeout=120, what="stable serving")
    load = Load(f"http://127.0.0.1:{port}", tmp / "load.json").start()
    try:
        cli.ok("promote", soak.SYSTEM, "topic-head@2", timeout=600)
        yield soak.Soak(cli, controller, load)
    finally:
        load.stop()
        cli("down")
        controller.stop()


def test_crashes_under_load_lose_no_request_and_leak_nothing(system: soak.Soak, tmp_path: Path) -> None:
    figures = system.run(CRASHES)
    (tmp_path / "soak.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures))
    assert set(figures["kills"]) == set(soak.CHOSEN)
    assert figures["processes"]["after"] == figures["processes"]["before"], figures
    assert figures["rssRatio"] <= 1.10, figures
    crashes = status(system.cli, soak.SYSTEM)["processes"]["crashes"]
    assert sum(c["count"] for c in crashes.values()) >= CRASHES - figures["kills"].get("controller", 0)
    # the router's supervisor keeps its client connections and unanswered requests: no kill loses one
    assert figures["failed"] == 0, figures
