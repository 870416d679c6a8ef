"""The router's configuration: where a system's traffic goes, as the controller sets it.

    {"system": "topic-classifier", "generation": 7,
     "stable": {"revision": "r1a2b", "url": "http://127.0.0.1:3001"},
     "canary": {"revision": "r9f8e", "url": "http://127.0.0.1:3002"},
     "weight": 20, "headerRoute": {"name": "x-canary", "value": "1"}, "mirror": {"percent": 50},
     "sticky": {"header": "x-user-id"}, "fallback": true, "timeoutSeconds": 30}

``generation`` only grows: the router refuses a configuration older than the one it serves, so a
late write from a stale controller cannot undo a newer decision.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from controller.spec.base import Spec


class Upstream(Spec):
    """One revision's service: a plain ``http://host:port`` base URL (no path)."""

    revision: str = Field(min_length=1)
    url: str

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{v!r} is not an http://host:port URL")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{v!r} has a path: give the base URL only")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError(f"{v!r} has an invalid port") from None
        return f"http://{parts.netloc}"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80


class HeaderRoute(Spec):
    """Requests carrying header ``name`` (with exactly ``value``, or any value) go to the canary."""

    name: str = Field(min_length=1)
    value: str | None = None

    _lower = field_validator("name")(lambda cls, v: v.lower())


class Mirror(Spec):
    """Copy ``percent`` of the requests stable serves to the canary; its answers are only compared."""

    percent: float = Field(ge=0, le=100)


class Sticky(Spec):
    """Hash this header (or, when absent, this cookie) to keep a user on one revision."""

    header: str | None = None
    cookie: str | None = None

    _lower = field_validator("header")(lambda cls, v: v if v is None else v.lower())

    @model_validator(mode="after")
    def _some(self) -> Sticky:
        if not self.header and not self.cookie:
            raise ValueError("give header, cookie or both")
        return self


class RouterConfig(Spec):
    system: str = Field(min_length=1)
    generation: int = Field(ge=0)
    stable: Upstream | None = None
    canary: Upstream | None = None
    weight: float = Field(default=0.0, ge=0, le=100, description="percent of requests to the canary")
    header_route: HeaderRoute | None = None
    mirror: Mirror | None = None
    sticky: Sticky | None = None
    fallback: bool = Field(default=True, description="retry canary failures on stable")
    timeout_seconds: float = Field(default=30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _canary(self) -> RouterConfig:
        if self.canary is None:
            used = [
                n
                for n, on in (("weight", self.weight > 0), ("headerRoute", self.header_route), ("mirror", self.mirror))
                if on
            ]
            if used:
                raise ValueError(f"{', '.join(used)} need(s) a canary")
        elif self.stable is not None and self.canary.revision == self.stable.revision:
            raise ValueError(f"canary and stable are the same revision {self.stable.revision!r}")
        if self.stable is None and self.canary is not None:
            raise ValueError("a canary needs a stable revision to fall back to")
        return self

    def wire(self) -> dict[str, object]:
        """The full wire form, nulls included (what the router persists and serves)."""
        return self.model_dump(mode="json", by_alias=True)
