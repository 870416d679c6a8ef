"""The ``Control`` port over the local controller's HTTP API (what the CLI uses locally), found
through ``$MODSHIP_HOME/controller.json`` (its address, its owner and the owner's token; mode 0600).
``MODSHIP_TOKEN``, when set, is sent instead: acting as another user (``modship token create``).
The server decides who the actor is from the token; only ``actor.reason`` travels, as the body's
``"reason"``. Errors come back as the API's ``{"error", "exitCode"}`` and are raised again as the
same kind of ``ModshipError``."""

from __future__ import annotations

import json
import os
from typing import Any, TypeVar

import httpx
import pydantic

from controller import settings
from controller.errors import (
    Conflict,
    Denied,
    Forbidden,
    IntegrityError,
    ModshipError,
    NotFound,
    SpecError,
    Unavailable,
)
from controller.spec import control

M = TypeVar("M", bound=control.Model)
_BY_CODE: dict[int, type[ModshipError]] = {
    2: SpecError, 3: NotFound, 4: IntegrityError, 5: Conflict, 6: Unavailable, 8: Denied, 9: Forbidden
}  # fmt: skip
TOKEN_ENV = "MODSHIP_TOKEN"


class HttpControl:
    def __init__(self, cfg: settings.Settings, *, timeout: float = 900.0) -> None:
        path = cfg.home / "controller.json"
        if not path.exists():
            raise Unavailable(f"no local controller for {cfg.home}: start one with `modship up`")
        info = json.loads(path.read_text())
        pid = int(info.get("pid", 0))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise Unavailable(f"the local controller (pid {pid}) is not running: start it with `modship up`") from None
        except PermissionError:
            pass
        self.pid = pid
        self.url = str(info["url"])
        self.user = str(info.get("user") or "")
        token = os.environ.get(TOKEN_ENV) or str(info.get("token") or "")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify: str | bool = str(info["ca"]) if info.get("ca") else True  # a self-signed certificate given to up
        self._http = httpx.Client(
            base_url=self.url, headers=headers, verify=verify, timeout=httpx.Timeout(timeout, connect=2.0)
        )

    def close(self) -> None:
        self._http.close()

    # -- the port ----------------------------------------------------------------------------------
    def systems(self) -> list[control.Summary]:
        return [_as(control.Summary, x) for x in self._call("GET", "/v1/systems")]

    def status(self, system: str) -> control.StatusDocument:
        return _as(control.StatusDocument, self._call("GET", f"/v1/systems/{system}"))

    def history(self, system: str) -> list[control.HistoryRow]:
        return [_as(control.HistoryRow, x) for x in self._call("GET", f"/v1/systems/{system}/history")]

    def events(self, system: str, *, limit: int = 200) -> list[control.EventRow]:
        rows = self._call("GET", f"/v1/systems/{system}/events", limit=limit)
        return [_as(control.EventRow, x) for x in rows]

    def promote(self, system: str, req: control.PromoteRequest, *, actor: control.Actor) -> control.PromoteResult:
        body = _why(req.wire(), actor)
        return _as(control.PromoteResult, self._call("POST", f"/v1/systems/{system}/promote", body))

    def undo(self, system: str, req: control.UndoRequest, *, actor: control.Actor) -> control.UndoResult:
        body = _why({"toRevision": req.to_revision}, actor)
        return _as(control.UndoResult, self._call("POST", f"/v1/systems/{system}/undo", body))

    def command(self, system: str, cmd: control.Command, *, actor: control.Actor) -> control.CommandResult:
        return _as(control.CommandResult, self._call("POST", f"/v1/systems/{system}/{cmd.value}", _why({}, actor)))

    def toggle(self, system: str, req: control.ToggleRequest, *, actor: control.Actor) -> control.ToggleResult:
        body = _why(req.wire(), actor)
        return _as(control.ToggleResult, self._call("POST", f"/v1/systems/{system}/toggle", body))

    def approve(self, system: str, req: control.ApproveRequest, *, actor: control.Actor) -> control.ApproveResult:
        verb = "approve" if req.approve else "reject"
        body = _why({"revision": req.revision}, actor)
        return _as(control.ApproveResult, self._call("POST", f"/v1/systems/{system}/{verb}", body))

    # -- the local runtime only --------------------------------------------------------------------
    def deploy(self, req: control.DeployRequest, *, actor: control.Actor) -> control.DeployResult:
        return _as(control.DeployResult, self._call("POST", "/v1/systems", _why(req.wire(), actor)))

    def delete(self, system: str, *, actor: control.Actor) -> None:
        self._call("DELETE", f"/v1/systems/{system}", _why({}, actor))

    def whoami(self) -> str:
        """The user the controller takes this client for."""
        return str(self._call("GET", "/v1/healthz")["user"])

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        try:
            r = self._http.request(method, path, json=body, params=params or None)
        except httpx.HTTPError as exc:
            raise Unavailable(f"the local controller at {self.url} is not answering ({type(exc).__name__})") from exc
        try:
            data = r.json()
        except ValueError:
            raise ModshipError(f"unexpected answer from the controller ({r.status_code})") from None
        if r.status_code >= 400:
            err = _BY_CODE.get(int(data.get("exitCode", 1)), ModshipError)
            raise err(str(data.get("error", r.text)))
        return data


def _why(body: dict[str, Any], actor: control.Actor) -> dict[str, Any]:
    return {**body, "reason": actor.reason} if actor.reason else body


def _as(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ModshipError(f"unexpected answer from the controller: {exc.errors()[0]['msg']}") from None
