"""The example modules: real pretrained weights, registered on a real MLflow server.

The compatibility check must refuse encoder v2 -> head v1 (different embedding spaces, same shape:
a silent accuracy drop) and accept encoder v2 -> adapter -> head v1.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import Cli
from tests.support import examples

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built() -> tuple[object, dict[str, object]]:
    return examples.build()


def test_measured_accuracies_tell_the_modular_transfer_story(built: tuple[object, dict[str, float]]) -> None:
    _, report = built
    direct = report["topic-head@1 on text-encoder@1"]
    swapped = report["topic-head@1 on text-encoder@2 (no adapter)"]
    aligned = report["topic-head@1 on text-encoder@2 -> l3-to-l6@1"]
    assert direct > 0.9 and aligned > 0.88
    assert swapped < direct - 0.1  # the silent degradation a shape check would not see
    assert aligned > swapped + 0.1


def test_registered_examples_and_their_compatibility(cli: Cli, built: tuple[object, dict[str, object]]) -> None:
    root, report = built
    dirs = [str(root / name) for name in examples.ORDER]  # type: ignore[operator]
    cli.ok("module", "register", *dirs, "--skip-existing", timeout=600)

    head = json.loads(cli.ok("module", "show", "topic-head@1", "-o", "json").out)
    assert head["metadata"]["calibration"]["heldOutAccuracy"] == report["topic-head@1 on text-encoder@1"]
    assert 0 <= head["metadata"]["calibration"]["ece"] < 0.2
    assert head["metadata"]["inputStatistics"] == "reference-stats.json"
    assert "reference-stats.json" in head["files"] and "golden.json" in head["files"]
    enc = json.loads(cli.ok("module", "show", "text-encoder@2", "-o", "json").out)
    assert enc["contract"]["outputs"]["embedding"]["space"] == "paraphrase-minilm-l3-v2"
    assert enc["contract"]["inputs"]["text"]["tokenizer"].startswith("sha256:")

    r = cli("module", "compat", "text-encoder", "topic-head@1", "-o", "json")
    cells = {c["producer"]: c for c in json.loads(r.out)["cells"]}
    assert cells["text-encoder@1"]["compatible"]
    assert not cells["text-encoder@2"]["compatible"]
    assert [p["field"] for p in cells["text-encoder@2"]["problems"]] == ["space"]

    table = cli("module", "compat", "text-encoder@2", "topic-head@1")
    assert table.code == 1 and "paraphrase-minilm-l3-v2" in table.out
    assert cli.ok("module", "compat", "text-encoder@2", "l3-to-l6").code == 0
    assert cli.ok("module", "compat", "l3-to-l6", "topic-head@1").code == 0
