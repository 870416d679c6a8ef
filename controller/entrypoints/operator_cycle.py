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
from controller.adapters import notify
from controller.adapters.audit_log import AuditLog
from controller.adapters.gates import HttpGates
from controller.adapters.kube import api as kube_api
from controller.adapters.kube import caches, cleanup, router_pods
from controller.adapters.kube import governance as kube_governance
from controller.adapters.kube.events import EventRecorder
from controller.adapters.kube.names import service_url
from controller.adapters.kube.no_router import NoRouterSource
from controller.adapters.kube.rollouts import AUTHOR, BREAK_GLASS, Entry, RolloutCache, wire_spec
from controller.adapters.kube.store import KubernetesStore
from controller.adapters.kube.target import KubernetesTarget
from controller.adapters.kube.traffic import Notes
from controller.adapters.loadtest import LoadTests
from controller.adapters.notify import Notifier
from controller.apply import aliases, governance, module_facts, reconcile
from controller.apply.operator_metrics import Metrics
from controller.errors import ModshipError, NotFound, SpecError, Unavailable
from controller.plan import capabilities
from controller.plan import governance as gov
from controller.plan import rollout as machine
from controller.plan.actions import Event
from controller.plan.observations import Observations
from controller.plan.status import RolloutStatus
from controller.spec.rollout import Provider, Rollout, TrafficRouting

log = logging.getLogger("modship.operator")
GOVERNANCE = gov.CONDITION  # the condition of a new target the policy does not let start
MODULES = "ModuleGovernance"  # where the tiers and owners of the Rollout's module versions came from
LOAD_TEST = "LoadTest"  # the built-in load-test hook of a canary in flight
REFUSED_POLL = 30.0  # a refused change is looked at again this often (windows open by the minute)
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
    datasets: str = "/etc/modship/datasets"  # where a relative spec.loadTest.dataset is found


class Operator:
    """Reconciles one Rollout per call (in a worker thread); returns when to be called again."""

    def __init__(self, kube: kube_api.Kube, opts: Options) -> None:
        self.registry: ports.Registry | None = None
        if opts.registry_url:  # MLflow only when asked: importing it costs ~100 MB of the operator's RSS
            from controller import settings
            from controller.adapters import factory

            self.registry = factory.registry(settings.load(registry=opts.registry_url))
        self.facts = module_facts.ModuleFactsReader(self.registry) if self.registry is not None else None
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
            self.notifier = notify.from_file(
                Path(opts.notifications), mlflow=opts.registry_url, dead_letter=Path(opts.dead_letter)
            )
        self.audit = AuditLog(Path(opts.audit_file)) if opts.audit_file else None
        self.loads = LoadTests(Path(opts.datasets))  # the same load-test hook as the local controller's

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
            events = [a for a in d.actions if isinstance(a, Event)]
            store.stage(name, events + _break_glass(e, r, events))  # saved with the status
            seen.append(obs)

        facts = self._module_facts(store, r)

        def facts_for(revision: str | None) -> gov.ModuleFacts:  # what spec.modules says is of its revision
            return facts if facts is not None and revision == r.spec.revision else gov.UNKNOWN

        moves = aliases.for_changed_modules(self.registry, r.spec.revision, r.spec.modules) if self.registry else None
        d = reconcile.reconcile_once(
            name,
            store=store,
            target=target,
            sources=self._sources(r, store.namespace),
            now=now,
            record=lambda ev: self._record(store, e, r, ev, seen),
            aliases=moves,
            before_save=before_save,
            notify=self.notifier.on_decision if self.notifier is not None else None,
            gates=self.gates,
            release=lambda st: kube_governance.release(
                self.kube, store.namespace, name, e.annotations, st, target=r.spec.revision, facts=facts_for(st.canary)
            ),
            admit=lambda r, st: self._admit(store, e, r, st, now=now, facts=facts_for(r.spec.revision)),
        )
        if d.status != s:
            st = d.status
            log.info(
                "%s/%s: %s step %d weight %g (%s)", e.namespace, name, st.phase, st.step, st.traffic.weight, st.reason
            )
        self._load_test(store, e, r, d.status)
        store.sync(name)
        self.metrics.cycle((e.namespace, name), r, s=s, obs=seen[0], d=d, now=now)
        after = d.requeue_after if d.requeue_after is not None else self.opts.resync
        if GOVERNANCE in notes:  # a refused change: look again when a window may have opened (or the policy changed)
            after = min(after, REFUSED_POLL)
        return now + after

    def _load_test(self, store: KubernetesStore, e: Entry, r: Rollout, s: RolloutStatus) -> None:
        """The built-in load-test hook while the canary is in flight: the dataset through the system's
        Service (every revision's pods), so stable and canary both get samples; condition ``LoadTest``."""
        spec = r.spec.load_test if s.in_flight else None
        port = r.spec.workload.port if r.spec.workload is not None else 3000
        url = service_url(r.spec.system, store.namespace, port)
        shown = self.loads.sync((store.namespace, e.name), spec, url)
        if shown is not None:
            store.notes[LOAD_TEST] = (shown[0], "Running" if shown[0] else "DatasetUnreadable", shown[1])

    def _module_facts(self, store: KubernetesStore, r: Rollout) -> gov.ModuleFacts | None:
        """The tiers and owners of the module versions ``spec.modules`` names, from the registry, when
        a policy may need them; the condition ``ModuleGovernance`` says where they came from."""
        if not module_facts.pinned(r.spec.modules) or kube_governance.policy(self.kube, store.namespace) is None:
            return None
        if self.facts is None:
            why = f"{module_facts.NO_REGISTRY}: a system's own rule applies, else the stable tier's, and no owner's"
            store.notes[MODULES] = (False, "NoRegistry", why)
            return None
        facts = self.facts.read(r.spec.modules)
        if facts is None:
            return None
        if facts.problem:
            why = f"not read from the registry ({facts.problem}): counted as stable, owners unknown"
            store.notes[MODULES] = (False, "RegistryUnavailable", why)
        else:
            owners = "; ".join(f"{m}: {', '.join(o)}" for m, o in sorted(facts.owners.items()))
            store.notes[MODULES] = (True, "FromRegistry", f"tiers {', '.join(facts.tiers)}; owners {owners}")
        return facts

    def _admit(
        self, store: KubernetesStore, e: Entry, r: Rollout, s: RolloutStatus, *, now: float, facts: gov.ModuleFacts
    ) -> Rollout:
        """The rollout as the namespace's policy lets it run: a new target whose author may not
        promote it (now) is not started, whoever wrote it and however (``modship promote`` or a bare
        ``kubectl edit``); the condition ``Governance`` says why, with an Event and an audit entry
        once per refusal. It starts by itself once allowed (a window opens, the policy changes)."""
        target = r.spec.revision
        refused = kube_governance.admission(
            self.kube, store.namespace, e.name, annotations=e.annotations, target=target, s=s, now=now, facts=facts
        )
        if refused is None:
            return r
        held = governance.held(
            refused, target=target, shown=e.conditions, system=e.name, author=e.annotations.get(AUTHOR), now=now,
            namespace=store.namespace,
        )  # fmt: skip
        store.notes[GOVERNANCE] = (False, held.reason.value, held.message)
        if held.event is not None:
            log.warning("%s/%s: %s", e.namespace, e.name, held.message)
            store.record(e.name, held.event)
        if held.audit is not None:
            self._audit(held.audit)
        return r.model_copy(update={"spec": r.spec.model_copy(update={"revision": gov.held_target(s)})})

    def _record(self, store: KubernetesStore, e: Entry, r: Rollout, ev: Event, seen: list[Observations]) -> None:
        """The Event on the Rollout (with a ``BreakGlass`` Event when a new canary starts by breaking
        glass), and what the audit log keeps of it (``apply.governance.transition_entries``)."""
        store.record(e.name, ev)
        broken = _break_glass(e, r, [ev])
        for glass in broken:
            store.record(e.name, glass)
        entries = governance.transition_entries(
            ev, system=e.name, now=time.time(), release=seen[0].release if seen else None,
            started_by=e.annotations.get(AUTHOR) or "unknown", glass=broken,
            glass_why=e.annotations.get(BREAK_GLASS), target=r.spec.revision, namespace=store.namespace,
        )  # fmt: skip
        for body in entries:
            self._audit(body)

    def _audit(self, body: dict[str, Any]) -> None:
        if self.audit is None:
            return
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
        self.loads.stop((e.namespace, e.name))
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


def _break_glass(e: Entry, r: Rollout, events: list[Event]) -> list[Event]:
    """The Rollout's ``modship.dev/break-glass`` annotation (stamped with its revision by
    ``promote --break-glass``) as ``apply.governance.break_glass`` reads it."""
    return governance.break_glass(
        events, target=r.spec.revision, author=e.annotations.get(AUTHOR), why=e.annotations.get(BREAK_GLASS)
    )


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
