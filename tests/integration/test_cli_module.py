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


def test_signed_modules_where_a_signature_is_required(embedded_cli: Cli, tmp_path: Path) -> None:
    from tests.support import keys

    private, public = keys.pair(tmp_path / "keys")
    _, stranger = keys.pair(tmp_path / "keys", "stranger")
    embedded_cli.home.mkdir(parents=True, exist_ok=True)
    policy = embedded_cli.home / "signing.yaml"
    policy.write_text(yaml.safe_dump({"requireSignature": True, "trustedKeys": [str(public)]}))
    plain = modules.write(tmp_path / "plain", modules.head_manifest("plain-head"))
    signed = modules.write(tmp_path / "signed", modules.head_manifest("signed-head"), seed=1)
    assert "signed signed-head" in embedded_cli.ok("module", "sign", str(signed), "--key", str(private)).out
    # one unsigned directory refuses the whole command: one line, exit 2, nothing registered
    r = embedded_cli("module", "register", str(signed), str(plain))
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert "plain-head" in r.err and "signature: not signed" in r.err and "Traceback" not in r.err
    assert json.loads(embedded_cli.ok("module", "list", "-o", "json").out) == []
    # tampered after signing: refused, naming the file
    (signed / "stats.json").write_text('{"embedding": {"kind": "other"}}')
    r = embedded_cli("module", "register", str(signed))
    assert r.code == 2 and "stats.json changed since it was signed" in r.err, r.err
    embedded_cli.ok("module", "sign", str(signed), "--key", str(private))
    embedded_cli.ok("module", "register", str(signed))
    assert "signature verified with" in embedded_cli.ok("module", "verify", "signed-head@1").out
    # a key nobody trusts any more: what is stored no longer verifies
    policy.write_text(yaml.safe_dump({"requireSignature": True, "trustedKeys": [str(stranger)]}))
    r = embedded_cli("module", "verify", "signed-head@1")
    assert r.code == 2 and "Key mismatch" in r.err, r.err
