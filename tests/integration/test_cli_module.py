"""The module CLI: bad input is one line and exit 2 with nothing registered; the embedded default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import Cli
from tests.support import modules

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda m: m.update(role="decoder"), "role"),
        (lambda m: m["contract"].pop("inputs"), "contract.inputs"),
        (lambda m: m["metadata"].update(deprecation="next week"), "metadata.deprecation"),
        (lambda m: m["runtime"]["files"].update(weights="gone.npz"), "runtime.files.weights"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_registered(embedded_cli: Cli, tmp_path: Path, mutate, needle) -> None:  # type: ignore[no-untyped-def]
    good = modules.write(tmp_path / "good", modules.head_manifest("good-head"))
    m = modules.head_manifest("bad-head")
    mutate(m)
    bad = modules.write(tmp_path / "bad", m)
    (bad / "module.yaml").write_text(yaml.safe_dump(m))
    r = embedded_cli("module", "register", str(good), str(bad))
    assert r.code == 2, r.err
    assert needle in r.err and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert json.loads(embedded_cli.ok("module", "list", "-o", "json").out) == []


def test_bad_refs_and_missing_things(embedded_cli: Cli, tmp_path: Path) -> None:
    assert embedded_cli("module", "show", "Bad@Ref!").code == 2
    assert embedded_cli("module", "show", "nothing@1").code == 3
    assert embedded_cli("module", "register", str(tmp_path / "absent")).code == 2
    r = embedded_cli("module", "deprecate", "x@1", "--after", "soon")
    assert r.code == 2 and "--after" in r.err


def test_embedded_default_needs_no_server(embedded_cli: Cli, tmp_path: Path) -> None:
    d = modules.write(tmp_path / "m", modules.head_manifest("local-head"))
    embedded_cli.ok("module", "register", str(d))
    again = json.loads(embedded_cli.ok("module", "register", str(d), "--skip-existing", "-o", "json").out)
    assert again[0]["skipped"] and again[0]["version"] == 1
    assert (embedded_cli.home / "mlflow.db").exists()
    assert "ok" in embedded_cli.ok("module", "verify", "local-head@1").out
