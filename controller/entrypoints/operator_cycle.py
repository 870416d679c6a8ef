"""One cycle of the operator for one Rollout, composed from the Kubernetes adapters: the Rollout's
finalizer and Events, then ``apply.reconcile.reconcile_once`` with the Kubernetes store and Target,
the cycle's Events staged into the status it saves (a crash between saving and posting them loses
none and repeats none), and errors turned into when to try again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller import backoff, ports
from controller.adapters.audit_log import AuditLog
from controller.adapters.gates import HttpGates
from controller.adapters.kube import api as kube_api
from controller.adapters.kube import caches, cleanup, router_pods
from controller.adapters.kube import governance as kube_governance
from controller.adapters.kube.events import EventRecorder
from controller.adapters.kube.no_router import NoRouterSource
from controller.adapters.kube.rollouts import AUTHOR, Entry, RolloutCache, wire_spec
from controller.adapters.kube.store import KubernetesStore
from controller.adapters.kube.target import KubernetesTarget
from controller.adapters.kube.traffic import Notes
from controller.adapters.notify import Notifier
from controller.apply import aliases, governance, reconcile
from controller.apply.operator_metrics import Metrics
from controller.errors import ModshipError, NotFound, SpecError, Unavailable
from controller.plan import capabilities
from controller.plan import rollout as machine
from controller.plan.actions import Event
from controller.plan.audit import Action
from controller.plan.observations import Observations
from controller.plan.reasons import Reason
from controller.plan.status import RolloutStatus
from controller.spec import notifications
from controller.spec.rollout import Provider, Rollout, TrafficRouting

log = logging.getLogger("modship.operator")
Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Options:
    namespaces: tuple[str, ...]  # empty: all namespaces
    kubeconfig: str | None = None
    context: str | None = None
    identity: str = ""
    lease_name: str = "modship-operator"
    lease_namespace: str | None = None
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    prometheus_url: str | None = None
    registry_url: str | None = None  # an MLflow URL: move @stable/@canary aliases with rollouts
    workers: int = 32
    resync: float = 300.0
    liveness: str | None = None
    metrics_port: int | None = None
    notifications: str | None = None  # a notifications file: CloudEvents of transitions to its sinks
    dead_letter: str = "/tmp/modship/dead-letter.jsonl"
    audit_file: str | None = None  # append the hash-chained audit log here (a file on a volume)


class Operator:
    """Reconciles one Rollout per call (in a worker thread); returns when to be called again."""

    def __init__(self, kube: kube_api.Kube, opts: Options) -> None:
        self.registry: ports.Registry | None = None
        if opts.registry_url:  # MLflow only when asked: importing it costs ~100 MB of the operator's RSS
            from controller import settings
            from controller.adapters import factory

            self.registry = factory.registry(settings.load(registry=opts.registry_url))
        self.kube, self.opts = kube, opts
        self.cache = RolloutCache()
        self.shared = caches.Shared(kube)
        self.events = EventRecorder(kube, instance=opts.identity)
        self._prometheus: dict[str, ports.MetricsSource] = {}
        self._failures: dict[Key, int] = {}
        self._errors: dict[Key, str] = {}
        self.metrics = Metrics()
        self.gates = HttpGates()
        self.notifier: Notifier | None = None
        if opts.notifications:  # the same sender the local controller uses
            if not Path(opts.notifications).exists():
                raise SpecError("file not found", source=opts.notifications)
            spec = notifications.load(Path(opts.notifications))
            if opts.registry_url and spec.links.mlflow is None:
                spec = spec.model_copy(update={"links": spec.links.model_copy(update={"mlflow": opts.registry_url})})
            self.notifier = Notifier(spec, dead_letter=Path(opts.dead_letter))
        self.audit = AuditLog(Path(opts.audit_file)) if opts.audit_file else None

    def reconcile(self, key: Key) -> float | None:
        """One cycle; seconds after its start when the Rollout is due again (None: on a change)."""
        t0 = time.time()
        ns, name = key
        notes: Notes = {}
        store = KubernetesStore(
            self.kube, self.cache, ns, recorder=self.events, notes=notes, default_prometheus=self.opts.prometheus_url
        )
        try:
            due = self._cycle(store, name, notes)
        except SpecError as exc:
            return self._invalid(store, name, exc)
        except NotFound as exc:
            log.info("%s/%s: %s", ns, name, exc)
            return self._retry(store, key, exc, 30.0)
        except kube_api.KubeUnavailable as exc:  # a write raced another (a person's edit): read again, quietly
            return self._retry(store, key, exc, exc.delay, condition=exc.status != 409)
        except Unavailable as exc:
            return self._retry(store, key, exc, exc.delay)
        except ModshipError as exc:
            return self._retry(store, key, exc, 5.0)
        self._failures.pop(key, None)
        self._errors.pop(key, None)
        return None if due is None else due - t0

    def _cycle(self, store: KubernetesStore, name: str, notes: Notes) -> float | None:
        """Reconcile; the wall-clock time the Rollout is due again (None: deleted)."""
        e = self.cache.get(self.kube, store.namespace, name)
        if e is None:
            return None
        if e.deleting:
            self._delete(store, e)
            return None
        if not e.finalized:
            store.add_finalizer(e)
        store.replay(e)
        r, s, _ = store.load(name)
        notes.update(_metrics_note(r))
        notes.update(_capabilities_note(r))
        target = KubernetesTarget(self.shared, r, owner=e.owner, status=s, toggles=e.toggles, notes=notes)
        now = time.time()
        seen: list[Observations] = []

        def before_save(r: Rollout, s: RolloutStatus, obs: Observations, d: machine.Decision) -> None:
            store.stage(name, [a for a in d.actions if isinstance(a, Event)])  # saved with the status
            seen.append(obs)

        moves = aliases.for_changed_modules(self.registry, r.spec.revision, r.spec.modules) if self.registry else None
        d = reconcile.reconcile_once(
            name,
            store=store,
            target=target,
            sources=self._sources(r, store.namespace),
            now=now,
            record=lambda ev: self._record(store, e, name, ev, seen),
            aliases=moves,
            before_save=before_save,
            notify=self.notifier.on_decision if self.notifier is not None else None,
            gates=self.gates,
            release=lambda st: kube_governance.release(self.kube, store.namespace, name, e.annotations, st),
        )
        if d.status != s:
            st = d.status
            log.info(
                "%s/%s: %s step %d weight %g (%s)", e.namespace, name, st.phase, st.step, st.traffic.weight, st.reason
            )
        store.sync(name)
        self.metrics.cycle((e.namespace, name), r, s=s, obs=seen[0], d=d, now=now)
        return now + (d.requeue_after if d.requeue_after is not None else self.opts.resync)

    def _record(self, store: KubernetesStore, e: Entry, name: str, ev: Event, seen: list[Observations]) -> None:
        """The Event on the Rollout, and what the audit log keeps of it: the operator's own
        transitions, and a new canary under its author's name (the admission policy's word)."""
        store.record(name, ev)
        if self.audit is None:
            return
        action = governance.controller_action(ev.reason)
        actor = governance.CONTROLLER
        if ev.reason in (Reason.ROLLOUT_STARTED, Reason.ROLLOUT_RESTARTED):
            action, actor = Action.PROMOTE, e.annotations.get(AUTHOR) or "unknown"
        if action is None:
            return
        facts = governance.release_facts(seen[0].release if seen else None)
        body = governance.entry(
            action, system=name, actor=actor, reason=ev.message, now=time.time(), namespace=store.namespace,
            event=ev.reason.value, after=facts or None,
        )  # fmt: skip
        try:
            self.audit.append(body)
        except (ModshipError, OSError) as exc:  # reported, never a reason to stop a rollout halfway
            log.error("audit log: %s", exc)

    def _sources(self, r: Rollout, ns: str) -> dict[Provider, ports.MetricsSource]:
        routing = r.spec.traffic_routing
        builtin: ports.MetricsSource = NoRouterSource()
        if routing is not None and routing.modship is not None:  # the system's router pods
            token = router_pods.TOKENS.get(self.kube, ns)
            pods = router_pods.RouterPods(self.kube, ns, r.spec.system, routing.modship.port, token)
            builtin = router_pods.RouterPodsSource(pods)
        out: dict[Provider, ports.MetricsSource] = {Provider.BUILTIN: builtin}
        url = r.spec.prometheus
        if url:
            if url not in self._prometheus:
                from controller.adapters.prometheus import PrometheusSource

                self._prometheus[url] = PrometheusSource(url)
            out[Provider.PROMETHEUS] = self._prometheus[url]
        return out

    def _delete(self, store: KubernetesStore, e: Entry) -> None:
        if e.finalized:
            system, routing, port = _raw_routing(e.spec)
            cleanup.cleanup(self.kube, e.owner, system=system, routing=routing, port=port)
            store.remove_finalizer(e)
            log.info("%s/%s: deleted; cleaned up what it created", e.namespace, e.name)
        self.cache.gone(e.namespace, e.name)
        self.metrics.forget((e.namespace, e.name))
        self._failures.pop((e.namespace, e.name), None)
        self._errors.pop((e.namespace, e.name), None)

    def _invalid(self, store: KubernetesStore, name: str, exc: SpecError) -> float | None:
        log.warning("%s/%s: cannot run this spec: %s", store.namespace, name, exc)
        self.metrics.show((store.namespace, name), "Failed", 0.0)
        try:
            store.fail(name, exc)
        except ModshipError as err:
            return self._retry(store, (store.namespace, name), err, 5.0, condition=False)
        return self.opts.resync  # a new generation wakes it sooner; the cause may lie in another object

    def _retry(
        self, store: KubernetesStore, key: Key, exc: ModshipError, delay: float, *, condition: bool = True
    ) -> float:
        n = self._failures[key] = self._failures.get(key, 0) + 1
        message = str(exc)
        if condition and self._errors.get(key) != message:  # tell people once, not every retry
            self._errors[key] = message
            log.warning("%s/%s: %s (retrying)", key[0], key[1], message)
            with contextlib.suppress(ModshipError):
                kind = next(c.__name__ for c in type(exc).__mro__ if c.__module__ == "controller.errors")
                store.notes["Ready"] = (False, kind, message)
                store.sync(key[1])
        return backoff.delay(n, first=max(0.2, delay), cap=30.0, doublings=5)


def _metrics_note(r: Rollout) -> Notes:
    checks = r.spec.analysis.checks
    routing = r.spec.traffic_routing
    if routing is not None and routing.modship is not None:
        return {"Metrics": (True, "ModshipRouter", "builtin checks read the telemetry of the system's router pods")}
    if any(c.provider is Provider.BUILTIN for c in checks):
        names = ", ".join(c.name for c in checks if c.provider is Provider.BUILTIN)
        return {"Metrics": (False, "BuiltinMetricsNeedLocalRouter", f"checks {names}: {NoRouterSource.MESSAGE}")}
    if checks:
        return {"Metrics": (True, "Prometheus", f"checks query {r.spec.prometheus}")}
    return {}


def _capabilities_note(r: Rollout) -> Notes:
    """What the chosen traffic provider cannot serve of this Rollout (``plan.capabilities``), as the
    same words ``modship render`` and ``system validate --rollout`` print."""
    router = capabilities.router_of(r.spec)
    found = capabilities.gaps(r, router)
    if found:
        return {"Capabilities": (False, "UnservableByTrafficProvider", capabilities.summary(found, router))}
    label = capabilities.LABELS[router]
    return {"Capabilities": (True, "Served", f"{label} serves every check, step and policy of this Rollout")}


def _raw_routing(spec: dict[str, Any]) -> tuple[str | None, TrafficRouting | None, int]:
    """What cleanup needs, even from a spec modship cannot run."""
    system = spec.get("system") if isinstance(spec.get("system"), str) else None
    port = (spec.get("workload") or {}).get("port", 3000)
    try:
        routing = TrafficRouting.model_validate(wire_spec(spec).get("trafficRouting") or {})
    except ValueError:
        routing = None
    return system, routing, int(port) if isinstance(port, int) else 3000
