"""The ``Control`` port over the local controller's HTTP API (what the CLI uses locally), found
through ``$MODSHIP_HOME/controller.json``. Errors come back as the API's ``{"error", "exitCode"}``
and are raised again as the same kind of ``ModshipError``."""

from __future__ import annotations

import json
import os
from typing import Any, TypeVar

import httpx
import pydantic

from controller import settings
from controller.errors import Conflict, IntegrityError, ModshipError, NotFound, SpecError, Unavailable
from controller.spec import control

M = TypeVar("M", bound=control.Model)
_BY_CODE: dict[int, type[ModshipError]] = {2: SpecError, 3: NotFound, 4: IntegrityError, 5: Conflict, 6: Unavailable}


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
        self._http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=2.0))

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

    def promote(self, system: str, req: control.PromoteRequest) -> control.PromoteResult:
        return _as(control.PromoteResult, self._call("POST", f"/v1/systems/{system}/promote", req.wire()))

    def undo(self, system: str, req: control.UndoRequest) -> control.UndoResult:
        body = {"toRevision": req.to_revision}
        return _as(control.UndoResult, self._call("POST", f"/v1/systems/{system}/undo", body))

    def command(self, system: str, cmd: control.Command) -> control.CommandResult:
        return _as(control.CommandResult, self._call("POST", f"/v1/systems/{system}/{cmd.value}", {}))

    def toggle(self, system: str, req: control.ToggleRequest) -> control.ToggleResult:
        return _as(control.ToggleResult, self._call("POST", f"/v1/systems/{system}/toggle", req.wire()))

    # -- the local runtime only --------------------------------------------------------------------
    def deploy(self, req: control.DeployRequest) -> control.DeployResult:
        return _as(control.DeployResult, self._call("POST", "/v1/systems", req.wire()))

    def delete(self, system: str) -> None:
        self._call("DELETE", f"/v1/systems/{system}")

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


def _as(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ModshipError(f"unexpected answer from the controller: {exc.errors()[0]['msg']}") from None
