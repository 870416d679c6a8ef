"""The real local controller's API without any system deployed (no bentos: seconds): where it
listens, TLS, the files it writes, tokens made and revoked while it runs, and the CLI on all that."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import MODSHIP, Cli
from tests.support.local import Controller

pytestmark = pytest.mark.slow


def self_signed(where: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    c, k = where / "cert.pem", where / "key.pem"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return c, k


@pytest.fixture
def tls_controller(tmp_path: Path) -> Iterator[tuple[Cli, Controller]]:
    cert, key = self_signed(tmp_path)
    cli = Cli(home=tmp_path / "home", registry=None)
    c = Controller(cli, tmp_path / "controller.log", args=("--tls-cert", str(cert), "--tls-key", str(key)))
    yield cli, c.start()
    c.stop()


def run(cli: Cli, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MODSHIP, *args], capture_output=True, text=True, env={**cli.env(), **env}, timeout=120)


def test_over_tls_with_its_own_files_and_tokens(tls_controller: tuple[Cli, Controller]) -> None:
    cli, _ = tls_controller
    info = json.loads((cli.home / "controller.json").read_text())
    assert info["url"].startswith("https://127.0.0.1:") and info["user"] and info["ca"].endswith("cert.pem")
    for name in ("controller.json", "tokens.json"):
        assert (cli.home / name).stat().st_mode & 0o777 == 0o600
    assert info["token"] not in (cli.home / "tokens.json").read_text()
    r = run(cli, "status", "nothing")  # the CLI: over TLS, authenticated, a clean NotFound
    assert (r.returncode, r.stderr.strip()) == (3, "error: system 'nothing' is not deployed (modship deploy ...)")
    plain = info["url"].replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{plain}/v1/systems", timeout=5)
    auth = {"Authorization": f"Bearer {info['token']}"}
    assert httpx.get(f"{info['url']}/v1/systems", headers=auth, verify=info["ca"], timeout=5).json() == []
    assert httpx.get(f"{info['url']}/v1/systems", verify=info["ca"], timeout=5).status_code == 401

    bob = run(cli, "token", "create", "bob").stdout.strip()
    assert bob.startswith("mst_") and bob not in (cli.home / "tokens.json").read_text()
    listed = json.loads(run(cli, "token", "list", "-o", "json").stdout)
    assert set(listed) == {info["user"], "bob"}
    who = httpx.get(f"{info['url']}/v1/healthz", headers={"Authorization": f"Bearer {bob}"}, verify=info["ca"])
    assert who.json() == {"ok": True, "user": "bob"}
    assert run(cli, "token", "revoke", "bob").returncode == 0
    r = run(cli, "status", "nothing", MODSHIP_TOKEN=bob)
    assert r.returncode == 8 and "a valid token is required" in r.stderr
    r = run(cli, "token", "revoke", "bob")
    assert r.returncode == 3 and "no token for user 'bob'" in r.stderr
    r = run(cli, "token", "create", "bob smith")
    assert r.returncode == 2 and "USER" in r.stderr and "Traceback" not in r.stderr


def test_a_network_address_needs_tls_or_an_explicit_flag(tmp_path: Path) -> None:
    cli = Cli(home=tmp_path / "home", registry=None)
    r = run(cli, "up", "--host", "0.0.0.0")
    assert r.returncode == 2 and "--host: 0.0.0.0 is not a loopback address" in r.stderr
    assert not (cli.home / "controller.json").exists()
    r = run(cli, "up", "--host", "0.0.0.0", "--tls-cert", str(tmp_path / "nope.pem"))
    assert r.returncode == 2 and "give both --tls-cert and --tls-key" in r.stderr
    c = Controller(cli, tmp_path / "controller.log", args=("--host", "0.0.0.0", "--insecure-bind")).start()
    try:
        assert "without TLS: tokens travel in clear text" in (tmp_path / "controller.log").read_text()
        assert run(cli, "status", "nothing").returncode == 3
    finally:
        c.stop()
    assert os.environ.get("MODSHIP_TOKEN") is None  # nothing leaked into the test process
