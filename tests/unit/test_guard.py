"""The control API's guard (token, origin, JSON) and the token store behind it, on real files.
The guard wraps a two-route app here; ``test_api`` checks it in front of the real route table."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from controller import atomic
from controller.adapters.tokens import TokenStore
from controller.entrypoints import guard
from controller.entrypoints.cli_up import check_bind, is_loopback
from controller.errors import NotFound, SpecError

OWN = "http://127.0.0.1:18000"


def client(store: TokenStore) -> TestClient:
    async def who(request: Request) -> JSONResponse:
        return JSONResponse({"user": request.state.user})

    async def metrics(request: Request) -> JSONResponse:
        return JSONResponse({"open": True})

    app = Starlette(
        routes=[Route("/v1/who", who, methods=["GET", "POST", "DELETE"]), Route("/metrics", metrics)],
        middleware=[
            Middleware(guard.Guard, user_of=store.user_of, origins=guard.own_origins("http", "127.0.0.1", 18000))
        ],
    )
    return TestClient(app, base_url=OWN)


@pytest.fixture
def store(tmp_path: Path) -> TokenStore:
    return TokenStore(tmp_path)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer"}, {"Authorization": "Bearer mst_wrong"}, {"Authorization": "Basic b3duZXI6eA=="}],
    ids=["none", "empty", "unknown", "not bearer"],
)
def test_no_valid_token_is_401(store: TokenStore, headers: dict[str, str]) -> None:
    store.create("owner")
    r = client(store).get("/v1/who", headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["exitCode"] == 8 and "mst_" not in r.text


def test_a_valid_token_names_its_user(store: TokenStore) -> None:
    alice, bob = store.create("alice"), store.create("bob")
    http = client(store)
    assert http.get("/v1/who", headers=bearer(alice)).json() == {"user": "alice"}
    assert http.get("/v1/who", headers={"authorization": f"bearer {bob}"}).json() == {"user": "bob"}


def test_tokens_made_or_revoked_while_serving_count_at_once(store: TokenStore) -> None:
    http = client(store)
    assert http.get("/v1/who", headers=bearer("mst_x")).status_code == 401  # no file yet
    carol = store.create("carol")
    assert http.get("/v1/who", headers=bearer(carol)).json() == {"user": "carol"}
    store.revoke("carol")
    assert http.get("/v1/who", headers=bearer(carol)).status_code == 401
    again = store.create("carol")
    assert again != carol and http.get("/v1/who", headers=bearer(again)).status_code == 200
    store.create("carol")  # a new token replaces the user's previous one
    assert http.get("/v1/who", headers=bearer(again)).status_code == 401


@pytest.mark.parametrize("origin", ["https://evil.example", "http://127.0.0.1:18001", "null", "http://127.0.0.1.evil"])
def test_a_foreign_origin_is_403_even_with_a_valid_token(store: TokenStore, origin: str) -> None:
    token = store.create("owner")
    r = client(store).post("/v1/who", json={}, headers={**bearer(token), "Origin": origin})
    assert (r.status_code, r.json()["exitCode"]) == (403, 8)
    assert client(store).get("/metrics", headers={"Origin": origin}).status_code == 403


@pytest.mark.parametrize("origin", [OWN, "http://localhost:18000", "HTTP://LOCALHOST:18000/", "http://[::1]:18000"])
def test_the_controllers_own_origin_is_accepted(store: TokenStore, origin: str) -> None:
    token = store.create("owner")
    assert client(store).post("/v1/who", json={}, headers={**bearer(token), "Origin": origin}).status_code == 200


@pytest.mark.parametrize(
    ("method", "content_type", "status"),
    [
        ("POST", "text/plain", 415),
        ("POST", "application/x-www-form-urlencoded", 415),
        ("POST", "multipart/form-data; boundary=x", 415),
        ("POST", None, 415),
        ("DELETE", None, 415),
        ("POST", "application/json", 200),
        ("POST", "Application/JSON; charset=utf-8", 200),
        ("DELETE", "application/json", 200),
        ("GET", None, 200),
    ],
)
def test_a_request_that_changes_something_must_be_json(
    store: TokenStore, method: str, content_type: str | None, status: int
) -> None:
    token = store.create("owner")
    headers = {**bearer(token), **({"Content-Type": content_type} if content_type else {})}
    r = client(store).request(method, "/v1/who", content=b"{}" if method != "GET" else None, headers=headers)
    assert r.status_code == status
    if status == 415:
        assert r.json()["exitCode"] == 2


def test_metrics_need_no_token(store: TokenStore) -> None:
    assert client(store).get("/metrics").json() == {"open": True}


def test_the_token_file_keeps_hashes_only_and_only_its_owner_reads_it(store: TokenStore) -> None:
    old = os.umask(0)
    try:
        token = store.create("alice", now=5.0)
    finally:
        os.umask(old)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    data = json.loads(store.path.read_text())
    assert token not in store.path.read_text() and set(data["alice"]) == {"sha256", "created"}
    assert store.users() == {"alice": 5.0} and token.startswith("mst_") and len(token) > 40
    with pytest.raises(NotFound, match="no token for user 'bob'"):
        store.revoke("bob")
    with pytest.raises(SpecError, match="not a user name") as exc:
        store.create("bob smith")
    assert exc.value.field == "USER"


def test_a_secret_is_written_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        atomic.write_text(tmp_path / "secret.json", "{}", mode=0o600)
        atomic.write_text(tmp_path / "secret.json", "{}", mode=0o600)  # replacing keeps it so
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "secret.json").stat().st_mode) == 0o600


def test_where_the_api_may_listen(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    assert [is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2", "0.0.0.0", "10.1.2.3")] == [
        True, True, True, True, False, False,
    ]  # fmt: skip
    assert check_bind("127.0.0.1", tls_cert=None, tls_key=None, insecure_bind=False) is False
    with pytest.raises(SpecError, match="not a loopback address") as exc:
        check_bind("0.0.0.0", tls_cert=None, tls_key=None, insecure_bind=False)
    assert exc.value.field == "--host"
    assert check_bind("0.0.0.0", tls_cert=None, tls_key=None, insecure_bind=True) is False
    assert check_bind("10.1.2.3", tls_cert=cert, tls_key=key, insecure_bind=False) is True
    with pytest.raises(SpecError, match="give both") as exc:
        check_bind("10.1.2.3", tls_cert=cert, tls_key=None, insecure_bind=False)
    assert exc.value.field == "--tls-key"
    with pytest.raises(SpecError, match="is not a file"):
        check_bind("10.1.2.3", tls_cert=cert, tls_key=tmp_path / "none.pem", insecure_bind=False)
