"""The built-in metrics provider: the ``MetricsSource`` port over a router's telemetry.

It reads ``GET /-/modship/telemetry?window=S`` from the system's router and leaves the arithmetic
to ``controller.plan.telemetry.figure``. Provider failures (router down, slow, an unreadable answer,
reference statistics that cannot be compared) never raise: they come back as
``Sample(value=None, error=...)`` so analysis records an ``Error`` measurement. A check without a
built-in metric is a spec bug and raises SpecError. No retries: the next interval measures again.
"""

from __future__ import annotations

from typing import Any

import httpx

from controller.plan import router_telemetry
from controller.plan.observations import QueryContext, Sample
from controller.spec.rollout import Check


class BuiltinSource:
    """Telemetry of the router at ``admin_url`` (its base URL, ``http://127.0.0.1:PORT``)."""

    def __init__(self, admin_url: str, *, timeout: float = 2.0, token: str | None = None) -> None:
        self.admin_url = admin_url.rstrip("/")
        headers = {"x-modship-token": token} if token else None  # the router's admin token, if it asks for one
        self._client = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 0.5)), headers=headers)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> BuiltinSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def online(self) -> bool:
        try:
            return self._client.get(f"{self.admin_url}/-/modship/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def _snapshot(self, window_s: float) -> dict[str, Any]:
        r = self._client.get(f"{self.admin_url}/-/modship/telemetry", params={"window": f"{window_s:g}"})
        r.raise_for_status()
        doc = r.json()
        if not isinstance(doc, dict) or not isinstance(doc.get("revisions"), dict):
            raise ValueError("the router answered something that is not telemetry")
        return doc

    def sample(self, check: Check, ctx: QueryContext) -> Sample:
        router_telemetry.metric_of(check)
        try:
            snapshot = self._snapshot(ctx.window_s)
        except (httpx.HTTPError, ValueError) as exc:
            return Sample(
                value=None, error=f"router telemetry at {self.admin_url} unusable ({type(exc).__name__}: {exc})"
            )
        return router_telemetry.to_sample(snapshot, check, ctx)
