"""The composed-service template: one BentoML service running a locked modship System.

``modship system build`` copies this file next to ``modship.lock.yaml`` and the verified module
files, then runs ``bentoml build``. At start-up every module file's SHA-256 is checked against the
lock; a mismatch stops the service before it answers anything.

``POST /predict`` is a small Starlette route mounted on the service so that the request contract
is ours: a bad request is a 400 with a clear message, and is never logged as a server error.
"""

from __future__ import annotations

from pathlib import Path

import bentoml

from controller.pipeline import http, serving

BUNDLE = Path(__file__).resolve().parent
LOCK = serving.read_lock(BUNDLE)
serving.verify(BUNDLE, LOCK)  # at import: `bentoml serve` exits at once on any digest mismatch


@bentoml.asgi_app(http.app(), path="/")
@bentoml.service(name=LOCK.name, traffic={"timeout": 60}, workers=1)
class ModshipSystem:
    def __init__(self) -> None:
        self.app = serving.load(BUNDLE, verify=False)  # verified at import
        http.bind(self.app)

    def __is_ready__(self) -> bool:
        return self.app.ready
