"""The CLI's way to the local controller: its HTTP API, found through ``$MODSHIP_HOME/controller.json``."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx

from controller import settings
from controller.errors import Conflict, IntegrityError, ModshipError, NotFound, SpecError, Unavailable

_BY_CODE: dict[int, type[ModshipError]] = {2: SpecError, 3: NotFound, 4: IntegrityError, 5: Conflict, 6: Unavailable}


class LocalClient:
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
        self.url = str(info["url"])
        self._http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=2.0))

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
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
