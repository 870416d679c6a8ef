"""The MetricsSource port on Prometheus: instant queries through ``/api/v1/query``.

What to measure comes from ``plan.queries`` (templates rendered strictly); this module only runs
queries and reads their answers. A provider failure (unreachable, timeout, a Prometheus error, an
answer that is not one number) becomes ``Sample(value=None, error=...)``: the analysis turns it into
an ``Error`` verdict and the metricsDown policy. A missing template variable is a spec bug and is
raised as SpecError before any request is sent. No retries: the analysis measures again at the
check's next interval, and ``consecutiveErrorLimit`` decides when errors matter.
"""

from __future__ import annotations

import math
from typing import Any

import httpx

from controller.errors import SpecError
from controller.plan import queries
from controller.plan.observations import QueryContext, Sample
from controller.spec.rollout import Check

_READY_TIMEOUT = 1.0


class QueryFailed(Exception):
    """A query that produced no usable number; the message goes into ``Sample.error``."""


class PrometheusSource:
    """Instant queries against the Prometheus at ``url`` (a path prefix is kept)."""

    def __init__(self, url: str, *, timeout: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._client = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> PrometheusSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def online(self) -> bool:
        """True when Prometheus says it is ready (503 while it replays its WAL at start-up)."""
        try:
            r = self._client.get("/-/ready", timeout=min(self.timeout, _READY_TIMEOUT))
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    def sample(self, check: Check, ctx: QueryContext) -> Sample:
        if not check.query:
            raise SpecError(f"check {check.name!r} has no query for provider prometheus", field="query")
        relative = check.threshold.relative_to == "stable"
        canary = queries.variables(ctx, revision=ctx.revision)
        # render everything first: a spec bug raises before any request
        value_q = queries.render(check.query, canary)
        stable_q = queries.render(check.query, queries.variables(ctx, revision=ctx.stable_revision))
        count_q = queries.render(queries.TEMPLATES["request-count"], canary)
        try:
            value = self.query(value_q)
            stable = self.query(stable_q) if relative else None
            count = self.query(count_q)
        except QueryFailed as exc:
            return Sample(value=None, error=str(exc))
        return Sample(value=value, stable=stable, samples=0 if count is None else round(count))

    def query(self, promql: str) -> float | None:
        """Run an instant query: one number, or None for no data (an empty result or NaN).

        Raises QueryFailed for anything else (unreachable, a Prometheus error, several series).
        """
        try:
            r = self._client.get("/api/v1/query", params={"query": promql})
        except httpx.HTTPError as exc:
            raise QueryFailed(f"Prometheus at {self.url} unreachable ({type(exc).__name__}: {exc})") from exc
        body = _json(r)
        if r.status_code != 200 or body.get("status") != "success":
            reason = f"{body.get('errorType', 'HTTP')} {body.get('error', r.status_code)}"
            raise QueryFailed(f"Prometheus at {self.url} failed query {promql!r}: {reason}")
        return _number(body.get("data") or {}, promql)


def _json(r: httpx.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _number(data: dict[str, Any], promql: str) -> float | None:
    kind, result = data.get("resultType"), data.get("result")
    try:
        if kind == "scalar":
            return _float_or_none(result[1])  # type: ignore[index]
        if kind == "vector" and isinstance(result, list):
            if len(result) > 1:
                labels = ", ".join(str(s.get("metric", {})) for s in result[:3])
                raise QueryFailed(
                    f"query {promql!r} returned {len(result)} series, expected one "
                    f"(aggregate it, e.g. with sum()): {labels}"
                )
            return _float_or_none(result[0]["value"][1]) if result else None
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        raise QueryFailed(f"query {promql!r}: unreadable {kind} result {result!r}") from exc
    raise QueryFailed(f"query {promql!r} returned a {kind}, expected a number or one series")


def _float_or_none(raw: Any) -> float | None:
    value = float(raw)
    return None if math.isnan(value) else value
