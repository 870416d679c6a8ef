"""The applied configuration: an immutable ``Route`` per generation (requests take one snapshot and
keep it, so a swap never moves a request in flight), and ``Routes``, which validates, persists
(atomically) and applies new configurations, keeping one connection pool per upstream URL.

A canary URL the router did not route to before gets no request (weight, header route, mirror)
until a connection to it opens, probed every ``WARM_EVERY_S`` for up to ``WARM_LIMIT_S``: in a
cluster the revision's pod is Ready a moment before kube-proxy routes its Service there, and the
connections refused meanwhile would count as the canary's errors (and fail a 1 s analysis of a
healthy canary). After the limit it is routed as configured, so a canary that never listens shows
its failures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Final

import orjson
import pydantic

from controller import atomic
from controller.adapters.router import split, wire
from controller.adapters.router.upstream import Upstream
from controller.plan import telemetry
from controller.spec.routing import RouterConfig

log = logging.getLogger("modship.router")
WARM_EVERY_S: Final = 0.05
WARM_LIMIT_S: Final = 10.0


class Route:
    """One applied configuration, with its upstreams and the header lines its answers carry."""

    __slots__ = (
        "canary",
        "canary_rev",
        "config",
        "draw",
        "fallback",
        "generation",
        "routed",
        "split",
        "stable",
        "stable_rev",
        "tails",
        "timeout",
        "warming",
    )

    def __init__(self, config: RouterConfig | None, upstreams: dict[str, Upstream], *, warming: bool = False) -> None:
        self.config = config
        self.generation = config.generation if config else -1
        stable, canary = (config.stable, config.canary) if config else (None, None)
        self.stable = upstreams[stable.url] if stable else None
        self.canary = upstreams[canary.url] if canary else None
        self.stable_rev = stable.revision if stable else ""
        self.canary_rev = canary.revision if canary else ""
        self.timeout = config.timeout_seconds if config else 30.0
        self.fallback = bool(config and config.fallback)
        self.split = split.Split.of(config)
        if warming:  # not reachable yet: everything to stable
            self.split = dataclasses.replace(self.split, canary=False)
        self.warming = warming
        # the weight when the split is a plain weighted draw (``split.to_canary`` without headers)
        self.draw = self.split.weight if self.split.canary and not self.split.keyed else None
        s, c = self.stable_rev.encode(), self.canary_rev.encode()
        self.tails = {
            b"stable": wire.tail(s, b"stable"),
            b"canary": wire.tail(c, b"canary"),
            b"canary-fallback": wire.tail(s, b"canary-fallback"),
        }
        # the same without their revision line, for an answer that names its revision itself
        self.routed = {k: v[v.index(b"\n") + 1 :] for k, v in self.tails.items()}

    def describe(self) -> str:
        c = self.config
        if c is None or c.stable is None:
            return "no stable revision"
        if c.canary is None:
            return f"100% {c.stable.revision}"
        extra = [
            f"header {c.header_route.name}" if c.header_route else "",
            f"mirror {c.mirror.percent:g}%" if c.mirror else "",
        ]
        return " ".join(
            [
                f"{c.stable.revision} {100 - c.weight:g}% / {c.canary.revision} {c.weight:g}%",
                *(e for e in extra if e),
                *(["(canary not reachable yet: all to stable)"] if self.warming else []),
            ]
        )


class Routes:
    """The current Route of one system's router, and how it changes."""

    def __init__(self, system: str, *, state: Path | None, telemetry: telemetry.Telemetry) -> None:
        self.system = system
        self.state = state
        self.telemetry = telemetry
        self.upstreams: dict[str, Upstream] = {}
        self.current = Route(None, {})
        self.warming: set[str] = set()  # canary URLs not reachable yet
        self._probes: set[asyncio.Task[None]] = set()

    def load(self) -> None:
        """Apply the persisted configuration, if any (a restarted router serves immediately)."""
        if self.state is None or not self.state.exists():
            return
        try:
            config = RouterConfig.model_validate_json(self.state.read_bytes())
        except (OSError, pydantic.ValidationError) as exc:
            log.warning("ignoring unreadable router state %s: %s", self.state, exc)
            return
        if config.system != self.system:
            log.warning("ignoring router state %s: it is for system %r", self.state, config.system)
            return
        self.apply(config)

    def _persist(self, config: RouterConfig) -> None:
        if self.state is None:
            return
        atomic.write_bytes(self.state, orjson.dumps(config.wire(), option=orjson.OPT_INDENT_2))

    def apply(self, config: RouterConfig) -> None:
        wanted = {u.url: u for u in (config.stable, config.canary) if u is not None}
        upstreams = {url: self.upstreams.get(url) or Upstream(url, u.host, u.port) for url, u in wanted.items()}
        for url, old in self.upstreams.items():
            if url not in upstreams:
                old.retire()
                self.warming.discard(url)
        canary = config.canary.url if config.canary is not None else None
        if canary is not None and canary not in self.upstreams and _loop() is not None:
            self.warming.add(canary)
            task = asyncio.get_running_loop().create_task(self._warm(upstreams[canary]))
            self._probes.add(task)
            task.add_done_callback(self._probes.discard)
        self.upstreams = upstreams
        self.current = Route(config, upstreams, warming=canary in self.warming)
        for u, role in ((config.stable, "stable"), (config.canary, "canary")):
            if u is not None:
                self.telemetry.record(u.revision, role)
        keep = [u.revision for u in (config.stable, config.canary) if u is not None]
        self.telemetry.forget_before(int(time.time()) - telemetry.HORIZON_S, keep=keep)
        log.info("applied generation %d: %s", config.generation, self.current.describe())

    async def _warm(self, up: Upstream) -> None:
        """Probe a new canary until a connection opens (or the limit passes), then route to it."""
        deadline = time.monotonic() + WARM_LIMIT_S
        while not up.retired and not await up.reachable(WARM_EVERY_S * 20):
            if time.monotonic() >= deadline:
                log.warning("canary %s not reachable after %gs: routing to it as configured", up.url, WARM_LIMIT_S)
                break
            await asyncio.sleep(WARM_EVERY_S)
        if up.retired or up.url not in self.warming:
            return
        self.warming.discard(up.url)
        cur = self.current
        if cur.config is not None and cur.canary is up:
            self.current = Route(cur.config, self.upstreams)
            log.info("canary %s reachable: %s", up.url, self.current.describe())

    def put(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """``PUT /-/modship/config``: the HTTP status and the answer."""
        try:
            config = RouterConfig.model_validate_json(body)
        except pydantic.ValidationError as exc:
            return 400, {
                "error": "invalid router config",
                "detail": orjson.loads(exc.json(include_url=False)),
            }
        if config.system != self.system:
            return 400, {"error": f"config is for system {config.system!r}; this router serves {self.system!r}"}
        if config.generation < self.current.generation:
            return 409, {
                "error": f"generation {config.generation} is older than {self.current.generation}",
                "generation": self.current.generation,
            }
        try:
            self._persist(config)
        except OSError as exc:
            return 500, {"error": f"cannot persist the config: {exc}"}
        self.apply(config)
        return 200, {"generation": config.generation, "canaryWarming": self.current.warming}


def _loop() -> asyncio.AbstractEventLoop | None:
    """The running event loop (a PUT of the admin API), or None (the state loaded at start)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
