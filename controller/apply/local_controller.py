"""The local controller (``modship up``): one reconcile loop for every deployed system.

Each system's rollout is reconciled when its requeue time comes or when a command wakes it; every
system is held under its controller lock, so two controllers never act on the same system. All
state is in the state directory: a restarted controller (even after ``kill -9``) adopts the
running processes and continues at the same step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller import backoff, ports, settings
from controller.apply import governance, operator_metrics, reconcile
from controller.compose.revision import Lock
from controller.errors import ModshipError, NotFound, Unavailable
from controller.plan import governance as gov
from controller.plan import rollout as machine
from controller.plan.actions import Event, SetAliases
from controller.plan.audit import Action
from controller.plan.observations import Observations
from controller.plan.status import RolloutStatus
from controller.spec.refs import ModuleRef
from controller.spec.rollout import Provider, Rollout

log = logging.getLogger("modship.controller")
IDLE_RECHECK = 5.0  # supervise processes at least this often


@dataclass(frozen=True)
class LocalParts:
    """What the local controller runs on, through ports. Built by its composition root
    (``entrypoints.local_wiring``), the same for ``modship up``, the API's tests and the dashboard's."""

    store: ports.SystemStore
    governance: ports.GovernanceState
    audit: ports.AuditTrail
    targets: ports.ScrapeTargets  # Prometheus file service discovery
    gates: ports.Gates
    bentos: ports.Bentos
    load_tests: ports.LoadTests
    runtime: Callable[[str, int], ports.Runtime]  # (system, router port): its processes and router
    builtin: Callable[[str, str], ports.MetricsSource]  # (router URL, admin token): built-in telemetry
    prometheus: Callable[[str], ports.MetricsSource]  # (Prometheus URL)
    registry: Callable[[], ports.Registry]  # called once, when first needed
    notifier: ports.Notifications | None = None  # None: the notifications file names no sink


@dataclass
class Managed:
    name: str
    runtime: ports.Runtime
    exit_stack: contextlib.ExitStack
    next_at: float = 0.0
    last: machine.Decision | None = None
    failures: int = 0
    sources: dict[Provider, ports.MetricsSource] = field(default_factory=dict)


class LocalController:
    def __init__(self, cfg: settings.Settings, parts: LocalParts, *, api: tuple[str, str] | None = None) -> None:
        """``api``: (scheme, host:port) of the controller's own API, published for Prometheus."""
        self.cfg = cfg
        self.parts = parts
        self.store = parts.store
        self.governance = parts.governance
        self.api = api
        self.metrics = operator_metrics.Metrics()  # the same rollout metrics as the operator's
        self._publishing = threading.Lock()
        self._registry: ports.Registry | None = None
        self.systems: dict[str, Managed] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.RLock()

    @property
    def registry(self) -> ports.Registry:
        if self._registry is None:
            self._registry = self.parts.registry()
        return self._registry

    # -- systems ------------------------------------------------------------------------------
    def adopt_all(self) -> None:
        for name in self.store.systems():
            self.manage(name)

    def manage(self, name: str) -> Managed:
        with self._lock:
            if name in self.systems:
                return self.systems[name]
            stack = contextlib.ExitStack()
            stack.enter_context(self.store.exclusive(name))
            port = int((self.store.dir(name) / "port").read_text())
            rt = self.parts.runtime(name, port)
            stack.callback(rt.close)
            rt.watch(lambda: self.wake(name))  # a unit that ends is restarted now, not at the next tick
            m = Managed(name, rt, stack)
            self.systems[name] = m
            self.wake()
        self.publish_targets()
        return m

    def forget(self, name: str, *, stop: bool) -> None:
        with self._lock:
            m = self.systems.pop(name, None)
        if m is not None:
            self.parts.load_tests.stop(name)
            if stop:
                m.runtime.stop_all()
            m.exit_stack.close()
            self.metrics.forget(("", name))
        self.publish_targets()

    def wake(self, name: str | None = None) -> None:
        if name is not None and name in self.systems:
            self.systems[name].next_at = 0.0
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            now = time.time()
            for m in list(self.systems.values()):
                if m.next_at <= now:
                    self.tick(m, now)
            nxt = min((m.next_at for m in self.systems.values()), default=now + IDLE_RECHECK)
            self._wake.wait(max(0.0, min(nxt, now + IDLE_RECHECK) - time.time()))

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def tick(self, m: Managed, now: float) -> None:
        try:
            m.runtime.supervise()
            d = reconcile.reconcile_once(
                m.name,
                store=self.store,
                target=m.runtime,
                sources=self._sources(m),
                now=now,
                record=lambda e: self._record(m.name, e, now),
                aliases=self._aliases(m.name),
                reference=lambda rev: self.reference(m.name, rev),
                before_save=lambda r, s, obs, d: self._measure(m.name, r, s, obs, d, now=now),
                notify=self.parts.notifier.on_decision if self.parts.notifier is not None else None,
                gates=self.parts.gates,
                release=lambda s: self.release(m.name, s),
            )
            m.last, m.failures = d, 0
            self._load_test(m, d)
            self.publish_targets()
            wait = d.requeue_after if d.requeue_after is not None else IDLE_RECHECK
            m.next_at = now + min(wait, IDLE_RECHECK)
        except Unavailable as exc:  # retried: the runtime may still be starting
            m.failures += 1
            m.next_at = now + backoff.delay(m.failures, first=0.5, cap=5.0)
            log.info("%s: %s (retrying)", m.name, exc)
        except ModshipError as exc:
            m.failures += 1
            m.next_at = now + 5.0
            log.error("%s: %s", m.name, exc)

    def _load_test(self, m: Managed, d: machine.Decision) -> None:
        """Run the rollout's load-test hook while its canary is in flight, and only then."""
        spec = self.store.rollout(m.name).spec.load_test if d.status.in_flight else None
        # a dataset that cannot be read is told once; the rollout goes on without it
        self.parts.load_tests.sync(m.name, spec, f"http://127.0.0.1:{m.runtime.router_port}")

    def _measure(
        self, name: str, r: Rollout, s: RolloutStatus, obs: Observations, d: machine.Decision, *, now: float
    ) -> None:
        """The cycle in the rollout metrics; a failure there never stops reconciling."""
        try:
            self.metrics.cycle(("", name), r, s=s, obs=obs, d=d, now=now)
        except Exception:
            log.exception("%s: could not update the rollout metrics", name)

    def publish_targets(self) -> None:
        """Prometheus file SD: what runs now (written only when it changed)."""
        units = []
        for name, m in list(self.systems.items()):
            s = m.last.status if m.last is not None else self.store.status(name)
            router, revisions = m.runtime.serving()
            units.append(
                ports.SystemUnits(
                    system=name,
                    router=router,
                    revisions=revisions,
                    stable=s.stable,
                    canary=s.canary if s.in_flight else None,
                    previous=s.previous_stable,
                )
            )
        controller = self.api[1] if self.api else None
        try:
            with self._publishing:  # the loop and the API thread (deploy, delete) both publish
                self.parts.targets.publish(units, controller=controller, scheme=self.api[0] if self.api else "http")
        except OSError as exc:  # never stops reconciling
            log.error("could not write Prometheus targets: %s", exc)

    def _sources(self, m: Managed) -> dict[Provider, ports.MetricsSource]:
        if Provider.BUILTIN not in m.sources:
            m.sources[Provider.BUILTIN] = self.parts.builtin(
                f"http://127.0.0.1:{m.runtime.router_port}", m.runtime.router_token
            )
        url = self.store.rollout(m.name).spec.prometheus
        if url and Provider.PROMETHEUS not in m.sources:
            m.sources[Provider.PROMETHEUS] = self.parts.prometheus(url)
        return m.sources

    def _record(self, name: str, e: Event, now: float) -> None:
        self.store.append_event(name, e, now=now)
        for body in governance.transition_entries(e, system=name, now=now):
            self.record_audit(body)

    def record_audit(self, body: dict[str, Any]) -> None:
        """Append to the audit log; a log that cannot be written is reported, never a reason to
        stop a rollout or a rollback halfway."""
        try:
            self.parts.audit.append(body)
        except (ModshipError, OSError) as exc:
            log.error("audit log: %s", exc)

    def release(self, name: str, s: RolloutStatus) -> gov.Release | None:
        """What governs the canary in flight (None: no change recorded for it)."""
        change = self.governance.change(name)
        if change is None or change.revision != s.canary:
            return None
        approvals = self.governance.approvals(name, change.revision)
        return gov.release(self.governance.policy(), name, change, approvals)

    def _aliases(self, name: str) -> Any:
        def move(a: SetAliases) -> None:
            stable = self.store.lock(name, a.stable)
            canary = self.store.lock(name, a.canary) if a.canary else None
            s_versions = {m.name: m.version for m in stable.modules.values()}
            c_versions = {m.name: m.version for m in canary.modules.values()} if canary else {}
            reg = self.registry
            for module, version in s_versions.items():
                self._alias(name, module, "stable", version)
            for module in sorted(set(s_versions) | set(c_versions)):
                v = c_versions.get(module)
                if v is not None and v != s_versions.get(module):
                    self._alias(name, module, "canary", v)
                elif (was := self._was(module, "canary")) is not None:
                    reg.delete_alias(module, "canary")
                    self._audit_alias(name, module, "canary", was, None)

        return move

    def _was(self, module: str, alias: str) -> int | None:
        try:
            return self.registry.resolve(ModuleRef(module, alias=alias)).version
        except NotFound:
            return None

    def _alias(self, system: str, module: str, alias: str, version: int) -> None:
        was = self._was(module, alias)
        if was != version:
            self.registry.set_alias(module, alias, version)
            self._audit_alias(system, module, alias, was, version)

    def _audit_alias(self, system: str, module: str, alias: str, was: int | None, version: int | None) -> None:
        what = {"module": module, "alias": alias}
        body = governance.entry(
            Action.ALIAS,
            system=system,
            actor=governance.CONTROLLER,
            reason=None,
            now=time.time(),
            before={**what, "version": was},
            after={**what, "version": version},
        )
        self.record_audit(body)

    def reference(self, name: str, rev: str) -> dict[str, Any] | None:
        """Reference input statistics of the revision's text encoder (for input drift checks)."""
        from controller.pipeline.engine import module_dir
        from controller.spec.modules import Role

        with contextlib.suppress(ModshipError, OSError, ValueError):
            lock: Lock = self.store.lock(name, rev)
            root = self.parts.bentos.path(lock) / "src" / "modules"
            for ref, m in lock.modules.items():
                stats = m.manifest.metadata.input_statistics
                if m.manifest.role is Role.ENCODER and stats:
                    data = json.loads((module_dir(root, ref) / stats).read_text())
                    return data if isinstance(data, dict) and "text" in data else None
        return None

    def close(self, *, stop_processes: bool) -> None:
        for name in list(self.systems):
            self.forget(name, stop=stop_processes)
        self.parts.load_tests.close()
        if self.parts.notifier is not None:
            self.parts.notifier.close(timeout=2.0)
        self.parts.gates.close()


@contextlib.contextmanager
def running(
    cfg: settings.Settings, parts: LocalParts, *, stop_processes: bool, api: tuple[str, str] | None = None
) -> Iterator[LocalController]:
    c = LocalController(cfg, parts, api=api)
    c.adopt_all()
    c.publish_targets()  # at once, even with nothing deployed: a Prometheus finds the controller
    t = threading.Thread(target=c.run, name="modship-reconcile", daemon=True)
    t.start()
    try:
        yield c
    finally:
        c.stop()
        t.join(timeout=10)
        c.close(stop_processes=stop_processes)


def controller_file(cfg: settings.Settings) -> Path:
    return cfg.home / "controller.json"
