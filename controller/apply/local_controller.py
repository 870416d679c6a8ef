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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller import backoff, ports, settings
from controller.adapters.audit_log import AuditLog
from controller.adapters.builtin_metrics import BuiltinSource
from controller.adapters.gates import HttpGates
from controller.adapters.loadtest import LoadRunner
from controller.adapters.local_governance import LocalGovernance
from controller.adapters.local_runtime import LocalRuntime
from controller.adapters.local_store import LocalStore
from controller.adapters.notify import Notifier
from controller.adapters.prometheus_sd import Publisher, SystemUnits, groups
from controller.apply import governance, operator_metrics, reconcile
from controller.errors import ModshipError, NotFound, Unavailable
from controller.plan import governance as gov
from controller.plan import rollout as machine
from controller.plan.actions import Event, SetAliases
from controller.plan.audit import Action
from controller.plan.observations import Observations
from controller.plan.status import RolloutStatus
from controller.spec import notifications
from controller.spec.refs import ModuleRef
from controller.spec.rollout import LoadTest, Provider, Rollout

log = logging.getLogger("modship.controller")
IDLE_RECHECK = 5.0  # supervise processes at least this often


@dataclass
class Managed:
    name: str
    runtime: LocalRuntime
    exit_stack: contextlib.ExitStack
    next_at: float = 0.0
    last: machine.Decision | None = None
    failures: int = 0
    sources: dict[Provider, ports.MetricsSource] = field(default_factory=dict)
    load: LoadRunner | None = None  # the load-test hook, while a canary is in flight
    load_refused: LoadTest | None = None  # a load test whose dataset could not be read


class LocalController:
    def __init__(
        self, cfg: settings.Settings, *, registry: ports.Registry | None = None, api: tuple[str, str] | None = None
    ) -> None:
        """``api``: (scheme, host:port) of the controller's own API, published for Prometheus."""
        self.cfg = cfg
        self.store = LocalStore(cfg.home)
        self.governance = LocalGovernance(cfg.home)
        self.audit = AuditLog(audit_file(cfg))
        self.api = api
        self.metrics = operator_metrics.Metrics()  # the same rollout metrics as the operator's
        self._targets = Publisher(cfg.home)
        self._publishing = threading.Lock()
        self._registry = registry
        self.systems: dict[str, Managed] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self.notifier = notifier_for(cfg)
        self.gates = HttpGates()

    @property
    def registry(self) -> ports.Registry:
        if self._registry is None:
            from controller.adapters import factory

            self._registry = factory.registry(self.cfg)
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
            rt = LocalRuntime(self.store, name, bentoml_home=self.cfg.bentoml_home, router_port=port)
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
            if m.load is not None:
                m.load.stop()
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
                notify=self.notifier.on_decision if self.notifier is not None else None,
                gates=self.gates,
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
        if m.load is not None and (spec is None or m.load.spec != spec):
            m.load.stop()
            m.load = None
        if spec is not None and m.load is None and spec != m.load_refused:
            try:
                m.load = LoadRunner(spec, f"http://127.0.0.1:{m.runtime.router_port}", home=self.cfg.home).start()
            except ModshipError as exc:  # told once; the rollout goes on without it
                m.load_refused = spec
                log.error("%s: load test not started: %s", m.name, exc)

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
            router = m.runtime.router
            units.append(
                SystemUnits(
                    system=name,
                    router=router.port if router is not None else None,
                    revisions={rev: p.port for rev, p in list(m.runtime.procs.items())},
                    stable=s.stable,
                    canary=s.canary if s.in_flight else None,
                    previous=s.previous_stable,
                )
            )
        controller = self.api[1] if self.api else None
        try:
            with self._publishing:  # the loop and the API thread (deploy, delete) both publish
                self._targets.publish(groups(units, controller=controller, scheme=self.api[0] if self.api else "http"))
        except OSError as exc:  # never stops reconciling
            log.error("could not write Prometheus targets: %s", exc)

    def _sources(self, m: Managed) -> dict[Provider, ports.MetricsSource]:
        if Provider.BUILTIN not in m.sources:
            m.sources[Provider.BUILTIN] = BuiltinSource(
                f"http://127.0.0.1:{m.runtime.router_port}", token=m.runtime.router_token
            )
        url = self.store.rollout(m.name).spec.prometheus
        if url and Provider.PROMETHEUS not in m.sources:
            from controller.adapters.prometheus import PrometheusSource

            m.sources[Provider.PROMETHEUS] = PrometheusSource(url)
        return m.sources

    def _record(self, name: str, e: Event, now: float) -> None:
        self.store.append_event(name, e, now=now)
        action = governance.controller_action(e.reason)
        if action is not None:
            body = governance.entry(
                action, system=name, actor=governance.CONTROLLER, reason=e.message, now=now, event=e.reason.value
            )
            self.record_audit(body)

    def record_audit(self, body: dict[str, Any]) -> None:
        """Append to the audit log; a log that cannot be written is reported, never a reason to
        stop a rollout or a rollback halfway."""
        try:
            self.audit.append(body)
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
        from controller.adapters import bento
        from controller.pipeline.engine import module_dir
        from controller.spec.modules import Role

        with contextlib.suppress(ModshipError, OSError, ValueError):
            lock = self.store.lock(name, rev)
            root = bento.bento_path(self.cfg.bentoml_home, lock) / "src" / "modules"
            for ref, m in lock.modules.items():
                stats = m.manifest.metadata.input_statistics
                if m.manifest.role is Role.ENCODER and stats:
                    data = json.loads((module_dir(root, ref) / stats).read_text())
                    return data if isinstance(data, dict) and "text" in data else None
        return None

    def close(self, *, stop_processes: bool) -> None:
        for name in list(self.systems):
            self.forget(name, stop=stop_processes)
        if self.notifier is not None:
            self.notifier.close(timeout=2.0)
        self.gates.close()


def notifier_for(cfg: settings.Settings) -> Notifier | None:
    """The sender for the notifications file, if it names any sink (a bad file is a SpecError)."""
    spec = notifications.load(cfg.notifications_file)
    if not spec.sinks:
        return None
    if spec.links.mlflow is None and cfg.registry_uri.startswith(("http://", "https://")):
        spec = spec.model_copy(update={"links": spec.links.model_copy(update={"mlflow": cfg.registry_uri})})
    return Notifier(spec, dead_letter=cfg.dead_letter_file)


@contextlib.contextmanager
def running(
    cfg: settings.Settings, *, stop_processes: bool, api: tuple[str, str] | None = None
) -> Iterator[LocalController]:
    c = LocalController(cfg, api=api)
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


def audit_file(cfg: settings.Settings) -> Path:
    return cfg.home / "audit.jsonl"


def controller_file(cfg: settings.Settings) -> Path:
    return cfg.home / "controller.json"
