"""The Kubernetes operator: the rollout state machine driven by Rollout custom resources.

    python -m controller.entrypoints.operator --namespace NS | --all-namespaces [--kubeconfig F]

kopf watches the Rollouts and modship's Deployments (``@kopf.on.event``: no per-object progress
or diff-base annotations, nothing written by kopf). A watch event only *wakes* a Rollout: one
scheduler reconciles each Rollout when it is due, at the time its last ``Decision.requeue_after``
asked for or when it changes (new generation, a command annotation, a Deployment's readiness), in
a bounded thread pool; never two cycles of one Rollout at once. A cycle is what
``apply.reconcile.reconcile_once`` does (observe -> ``plan.rollout.step`` -> execute -> save once)
with the Kubernetes Target and store, plus the cycle's Events named in the status it saves, so a
crash between saving and posting them loses none and repeats none. Metrics come from Prometheus;
the ``builtin`` provider needs the local router, so on Kubernetes its checks report an error and a
condition says so.

Only the holder of a ``coordination.k8s.io/v1`` Lease reconciles; other replicas keep watching and
take over when the lease expires, reading every Rollout's status again first (all state needed to
continue is in ``.status.machine``). A ``modship.dev/cleanup`` finalizer lets the holder undo its
routing changes and delete what it created before a Rollout goes. A spec the CRD schema admits but
modship cannot run ends as phase Failed with a condition naming the field, until it is fixed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

<<<<<<< HEAD
from controller import backoff, ports
from controller.adapters import kubernetes as k8s
from controller.adapters.kubernetes_store import Entry, EventRecorder, KubernetesStore, Notes, RolloutCache, wire_spec
from controller.apply import aliases, execute, observe
from controller.errors import ModshipError, NotFound, SpecError, Unavailable
from controller.plan import analysis
from controller.plan import rollout as machine
from controller.plan.actions import Event
from controller.plan.observations import Observations
from controller.plan.status import RolloutStatus
from controller.spec.rollout import Provider, Rollout, TrafficRouting

log = logging.getLogger("modship.operator")
Key = tuple[str, str]  # (namespace, name)
GROUP, VERSION = k8s.GROUP_VERSION.split("/")


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


# -- what the chart's dashboard shows ---------------------------------------------------------------


class Metrics:
    """``/metrics`` of the operator: each Rollout's weight and phase, analysis verdicts, rollbacks."""

    PHASES = ("Idle", "Progressing", "Paused", "Promoted", "Aborted", "Failed")
    ROLLBACKS = frozenset(
        {
            "AbortedByUser",
            "AnalysisFailed",
            "CanaryFailed",
            "MetricsUnavailable",
            "ProgressDeadlineExceeded",
            "RolledBack",
        }
    )

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        labels = ["namespace", "rollout"]
        self.weight = Gauge("modship_rollout_weight", "Canary weight (%)", labels, registry=self.registry)
        self.phase = Gauge(
            "modship_rollout_phase", "1 for the current phase", [*labels, "phase"], registry=self.registry
        )
        self.verdicts = Counter(
            "modship_rollout_analysis_verdicts",
            "Analysis measurements by check and verdict",
            [*labels, "check", "verdict"],
            registry=self.registry,
        )
        self.rollbacks = Counter(
            "modship_rollout_rollbacks",
            "Canaries stopped or rolled back, by reason",
            [*labels, "reason"],
            registry=self.registry,
        )
        self._series: dict[Key, set[tuple[Any, tuple[str, ...]]]] = {}

    def serve(self, port: int) -> None:
        from prometheus_client import start_http_server

        start_http_server(port, registry=self.registry)

    def _use(self, key: Key, metric: Any, *labels: str) -> Any:
        self._series.setdefault(key, set()).add((metric, (*key, *labels)))
        return metric.labels(*key, *labels)

    def show(self, key: Key, phase: str, weight: float) -> None:
        self._use(key, self.weight).set(weight)
        for p in self.PHASES:
            self._use(key, self.phase, p).set(1.0 if p == phase else 0.0)

    def cycle(
        self, key: Key, r: Rollout, *, s: RolloutStatus, obs: Observations, d: machine.Decision, now: float
    ) -> None:
        """After a cycle: its measurements (as ``plan.analysis`` judged them), the new weight and phase."""
        after = d.status
        in_flight = after.in_flight
        self.show(key, after.phase.value, after.traffic.weight if in_flight else 0.0)
        windows = machine.windows(r, s, now)
        for check, sample in obs.samples.items():
            m = analysis.measure(r.check(check), sample, now, window_full=windows.get(check, (0.0, True))[1])
            self._use(key, self.verdicts, check, m.verdict.value).inc()
        for a in d.actions:
            if isinstance(a, Event) and a.reason in self.ROLLBACKS:
                self._use(key, self.rollbacks, a.reason).inc()

    def forget(self, key: Key) -> None:
        for metric, labels in self._series.pop(key, set()):
            with contextlib.suppress(KeyError):
                metric.remove(*labels)


# -- one cycle --------------------------------------------------------------------------------------


class Operator:
    """Reconciles one Rollout per call (in a worker thread); returns when to be called again."""

    def __init__(self, kube: k8s.Kube, opts: Options) -> None:
        self.registry: ports.Registry | None = None
        if opts.registry_url:  # MLflow only when asked: importing it costs ~100 MB of the operator's RSS
            from controller import settings
            from controller.adapters import factory

            self.registry = factory.registry(settings.load(registry=opts.registry_url))
        self.kube, self.opts = kube, opts
        self.cache = RolloutCache()
        self.shared = k8s.Shared(kube)
        self.events = EventRecorder(kube, instance=opts.identity)
        self._prometheus: dict[str, ports.MetricsSource] = {}
        self._failures: dict[Key, int] = {}
        self._errors: dict[Key, str] = {}
        self.metrics = Metrics()

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
        except k8s.KubeUnavailable as exc:  # a write raced another (a person's edit): read again, quietly
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
        r, s, controls = store.load(name)
        notes.update(_metrics_note(r))
        target = k8s.KubernetesTarget(self.shared, r, owner=e.owner, status=s, toggles=e.toggles, notes=notes)
        # reconcile.reconcile_once, with this cycle's Events staged into the status it saves
        now = time.time()
        obs = observe.observe(r, s, controls, target=target, sources=self._sources(r), now=now)
        d = machine.step(r, s, obs, now)
        execute.runtime(d.actions, target)
        events = [a for a in d.actions if isinstance(a, Event)]
        store.stage(name, events)
        if d.status != s:
            store.save(name, d.status)
            st = d.status
            log.info(
                "%s/%s: %s step %d weight %g (%s)", e.namespace, name, st.phase, st.step, st.traffic.weight, st.reason
            )
        moves = aliases.for_changed_modules(self.registry, r.spec.revision, r.spec.modules) if self.registry else None
        execute.after_save(d.actions, record=lambda ev: store.record(name, ev), aliases=moves)
        store.sync(name)
        self.metrics.cycle((e.namespace, name), r, s=s, obs=obs, d=d, now=now)
        return now + (d.requeue_after if d.requeue_after is not None else self.opts.resync)

    def _sources(self, r: Rollout) -> dict[Provider, ports.MetricsSource]:
        out: dict[Provider, ports.MetricsSource] = {Provider.BUILTIN: k8s.NoRouterSource()}
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
            k8s.cleanup(self.kube, e.owner, system=system, routing=routing, port=port)
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
    if any(c.provider is Provider.BUILTIN for c in checks):
        names = ", ".join(c.name for c in checks if c.provider is Provider.BUILTIN)
        return {"Metrics": (False, "BuiltinMetricsNeedLocalRouter", f"checks {names}: {k8s.NoRouterSource.MESSAGE}")}
    if checks:
        return {"Metrics": (True, "Prometheus", f"checks query {r.spec.prometheus}")}
    return {}


def _raw_routing(spec: dict[str, Any]) -> tuple[str | None, TrafficRouting | None, int]:
    """What cleanup needs, even from a spec modship cannot run."""
    system = spec.get("system") if isinstance(spec.get("system"), str) else None
    port = (spec.get("workload") or {}).get("port", 3000)
    try:
        routing = TrafficRouting.model_validate(wire_spec(spec).get("trafficRouting") or {})
    except ValueError:
        routing = None
    return system, routing, int(port) if isinstance(port, int) else 3000


# -- when each Rollout is due ------------------------------------------------------------------------


class Scheduler:
    """Due times per Rollout (monotonic clock) and a bounded pool running the cycles."""

    def __init__(self, run_one: Callable[[Key], float | None], *, workers: int, gate: Callable[[], bool]) -> None:
        self._run_one, self._gate = run_one, gate
        self._heap: list[tuple[float, Key]] = []
        self._due: dict[Key, float] = {}
        self._running: set[Key] = set()
        self._again: set[Key] = set()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile")
        self._slots = asyncio.Semaphore(workers)
        self._wakeup = asyncio.Event()

    def wake(self, key: Key, at: float | None = None) -> None:
        """Reconcile ``key`` at ``at`` (default now), unless it is due earlier already."""
        at = time.monotonic() if at is None else at
        if key in self._running and at <= time.monotonic():
            self._again.add(key)
            return
        if self._due.get(key, float("inf")) <= at:
            return
        self._due[key] = at
        heapq.heappush(self._heap, (at, key))
        self._wakeup.set()

    def forget(self, key: Key) -> None:
        self._due.pop(key, None)
        self._again.discard(key)

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            if self._gate():
                while self._heap and self._heap[0][0] <= now:
                    at, key = heapq.heappop(self._heap)
                    if self._due.get(key) != at:
                        continue  # superseded
                    del self._due[key]
                    if key in self._running:
                        self._again.add(key)
                        continue
                    self._running.add(key)
                    asyncio.get_running_loop().create_task(self._one(key))
            nxt = self._heap[0][0] - now if self._heap and self._gate() else 1.0
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=max(0.0, min(nxt, 1.0)))

    async def _one(self, key: Key) -> None:
        async with self._slots:
            start = time.monotonic()
            try:
                delay = await asyncio.get_running_loop().run_in_executor(self._pool, self._run_one, key)
            except Exception:
                log.exception("%s/%s: reconcile failed", *key)
                delay = 10.0
        self._running.discard(key)
        if key in self._again:
            self._again.discard(key)
            self.wake(key)
        elif delay is not None:
            self.wake(key, start + delay)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# -- one acting replica ---------------------------------------------------------------------------------


def _micro(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """Leader election on a coordination.k8s.io/v1 Lease (client-go's rules): a lease is expired
    when its record has not changed for ``leaseDurationSeconds`` as *we* observed it (no clock skew
    between replicas matters); the holder renews every ``retry`` seconds and stops acting when it
    could not renew for ``renew_deadline`` (< the lease duration, so it stops before others start)."""

    def __init__(
        self,
        kube: k8s.Kube,
        *,
        name: str,
        namespace: str,
        identity: str,
        duration: float,
        renew_deadline: float,
        retry: float,
        on_change: Callable[[bool], None],
    ) -> None:
        self.kube, self.name, self.namespace, self.identity = kube, name, namespace, identity
        self.duration, self.renew_deadline, self.retry = duration, renew_deadline, retry
        self.on_change = on_change
        self._renewed = -float("inf")
        self._leader = False
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    @property
    def leader(self) -> bool:
        return self._leader and time.monotonic() - self._renewed < self.renew_deadline

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                held = await loop.run_in_executor(None, self._try)
            except ModshipError as exc:
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
                held = False
            if held:
                self._renewed = time.monotonic()
            if held != self._leader and (held or not self.leader):
                self._leader = held
                log.info("%s %s lease %s/%s", self.identity, "holds" if held else "lost", self.namespace, self.name)
                self.on_change(held)
            await asyncio.sleep(self.retry)

    def _try(self) -> bool:
        now = dt.datetime.now(dt.UTC)
        lease = self.kube.get(k8s.LEASES, self.namespace, self.name)
        if lease is None:
            spec = self._spec(now, now, transitions=0)
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name},
                "spec": spec,
            }
            try:
                self.kube.create(k8s.LEASES, self.namespace, body)
            except Unavailable:
                return False  # someone else created it first
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        duration = float(spec.get("leaseDurationSeconds") or self.duration)
        if holder and holder != self.identity and time.monotonic() < self._observed_at + duration:
            return False
        mine = holder == self.identity
        acquired = spec.get("acquireTime") if mine else _micro(now)
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        ops = [
            {"op": "add", "path": "/metadata/resourceVersion", "value": lease["metadata"]["resourceVersion"]},
            {
                "op": "add",
                "path": "/spec",
                "value": {**self._spec(now, None, transitions=transitions), "acquireTime": acquired},
            },
        ]
        try:
            self.kube.patch(k8s.LEASES, self.namespace, self.name, ops)
        except Unavailable:
            return False
        return True

    def _spec(self, now: dt.datetime, acquired: dt.datetime | None, *, transitions: int) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.duration)),
            "renewTime": _micro(now),
            "leaseTransitions": transitions,
        }
        if acquired is not None:
            spec["acquireTime"] = _micro(acquired)
        return spec

    def release(self) -> None:
        """Give the lease up at a clean exit, so another replica takes over at once."""
        if not self.leader:
            return
        lease = self.kube.get(k8s.LEASES, self.namespace, self.name)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        ops = [
            {"op": "add", "path": "/metadata/resourceVersion", "value": lease["metadata"]["resourceVersion"]},
            {"op": "replace", "path": "/spec/holderIdentity", "value": ""},
            {"op": "replace", "path": "/spec/leaseDurationSeconds", "value": 1},
        ]
        with contextlib.suppress(ModshipError):
            self.kube.patch(k8s.LEASES, self.namespace, self.name, ops)
        self._leader = False


# -- kopf ----------------------------------------------------------------------------------------------
=======
from controller.adapters.kube import api as kube_api
from controller.adapters.kube import caches
from controller.adapters.kube.lease import LeaseElector
from controller.apply.scheduler import Scheduler
from controller.entrypoints.operator_cycle import Key, Operator, Options
from controller.errors import ModshipError

log = logging.getLogger("modship.operator")
GROUP, VERSION = kube_api.GROUP_VERSION.split("/")
>>>>>>> main


def _settings(opts: Options) -> Any:
    import kopf

    s = kopf.OperatorSettings()
    s.peering.standalone = True  # one acting replica is decided by our Lease, not kopf's peering
    s.scanning.disabled = True  # serve what exists at start; no cluster-wide CRD/namespace watches
    s.posting.enabled = False  # Events come from the leader only (EventRecorder), never from kopf
    s.posting.level = logging.WARNING
    # No changing/daemon handlers are registered, so kopf keeps no progress or diff-base; should one
    # be added, it stores them in annotations (our status schema has no room for kopf's).
    s.persistence.finalizer = "kopf.modship.dev/finalizer"
    s.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.modship.dev")
    s.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kopf.modship.dev")
    s.watching.label_selectors["apps", "deployments"] = "app.kubernetes.io/managed-by=modship"
    s.watching.chunk_size = 500
    s.watching.connect_timeout = 10
    s.watching.server_timeout = 600
    s.networking.request_timeout = 30
    s.networking.connect_timeout = 10
    return s


def _wire(registry: Any, op: Operator, scheduler: Scheduler[Key], api: Any, namespace: str) -> None:
    import kopf

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> Any:
        c = api.configuration
        keys: dict[str, str] = c.api_key or {}
        token: str | None = keys.get("BearerToken") or keys.get("authorization")
        if c.refresh_api_key_hook is not None:
            c.refresh_api_key_hook(c)
            token = (c.api_key or {}).get("BearerToken") or token
        scheme, _sep, value = (token or "").partition(" ")
        return kopf.ConnectionInfo(
            server=c.host,
            ca_path=c.ssl_ca_cert,
            insecure=not c.verify_ssl,
            scheme=scheme or None,
            token=value or None,
            certificate_path=c.cert_file,
            private_key_path=c.key_file,
            default_namespace=namespace,
        )

    @kopf.on.event(GROUP, VERSION, "rollouts", registry=registry)
    async def rollout_event(event: kopf.RawEvent, **_: Any) -> None:
        obj: dict[str, Any] = dict(event["object"])
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if event.get("type") == "DELETED":
            op.cache.gone(*key)
            scheduler.forget(key)
        elif op.cache.observe(obj):
            scheduler.wake(key)

    @kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": "modship"}, registry=registry)
    async def deployment_event(event: kopf.RawEvent, **_: Any) -> None:
        obj: dict[str, Any] = dict(event["object"])
        meta = obj["metadata"]
        ns, owner = meta["namespace"], (meta.get("labels") or {}).get("modship.dev/rollout")
        if event.get("type") == "DELETED":
            op.shared.index.drop(ns, meta["name"])
            changed = True
        else:
            changed = op.shared.index.put(ns, meta["name"], caches.deployment_state(obj))
        if changed and owner and (ns, owner) in op.cache:
            scheduler.wake((ns, owner))


async def serve(opts: Options, *, stop: asyncio.Event | None = None) -> None:
    import kopf

    api: Any
    api, default_ns = kube_api.connect(opts.kubeconfig, opts.context, pool=opts.workers + 4)
    kube = kube_api.Kube(api)
    op = Operator(kube, opts)
    elector: LeaseElector

    def leadership(held: bool) -> None:
        if held:  # whatever another replica did meanwhile is in the status: read it again
            op.cache.distrust()
            for key in op.cache.keys():  # noqa: SIM118 (a copy: the watch adds keys meanwhile)
                scheduler.wake(key)

    scheduler: Scheduler[Key] = Scheduler(op.reconcile, workers=opts.workers, gate=lambda: elector.leader)
    lease_ns = opts.lease_namespace or (opts.namespaces[0] if opts.namespaces else default_ns)
    elector = LeaseElector(
        kube,
        name=opts.lease_name,
        namespace=lease_ns,
        identity=opts.identity,
        duration=opts.lease_duration,
        renew_deadline=opts.renew_deadline,
        retry=opts.retry_period,
        on_change=leadership,
    )
    if opts.metrics_port:
        op.metrics.serve(opts.metrics_port)
    registry = kopf.OperatorRegistry()
    _wire(registry, op, scheduler, api, lease_ns)
    tasks = [asyncio.create_task(elector.run()), asyncio.create_task(scheduler.run())]
    log.info("modship operator %s watching %s", opts.identity, ", ".join(opts.namespaces) or "all namespaces")
    try:
        await kopf.operator(
            registry=registry,
            settings=_settings(opts),
            namespaces=list(opts.namespaces),
            clusterwide=not opts.namespaces,
            standalone=True,
            liveness_endpoint=opts.liveness,
            stop_flag=stop,
        )
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, elector.release)
        scheduler.close()
        api.close()


def parse(argv: Sequence[str] | None = None) -> Options:
    p = argparse.ArgumentParser(prog="python -m controller.entrypoints.operator", description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)")
    where.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    p.add_argument("--kubeconfig", help="default: $KUBECONFIG, ~/.kube/config, else the pod's service account")
    p.add_argument("--context", help="kubeconfig context")
    default_id = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    p.add_argument("--identity", default=default_id, help="this replica's name in the Lease and in Events")
    p.add_argument("--lease-name", default="modship-operator")
    p.add_argument("--lease-namespace", help="default: the (first) watched namespace, else the context's")
    p.add_argument("--lease-duration", type=float, default=15.0, help="seconds")
    p.add_argument("--renew-deadline", type=float, default=10.0, help="seconds (less than --lease-duration)")
    p.add_argument("--retry-period", type=float, default=2.0, help="seconds between lease renewals")
    p.add_argument(
        "--prometheus-url",
        default=os.environ.get("MODSHIP_PROMETHEUS_URL"),
        help="for checks with provider prometheus when spec.prometheus is empty (env MODSHIP_PROMETHEUS_URL)",
    )
    p.add_argument(
        "--registry",
        default=os.environ.get("MODSHIP_REGISTRY"),
        help="MLflow URL: move the @stable/@canary aliases of spec.modules with rollouts (env MODSHIP_REGISTRY)",
    )
    p.add_argument("--workers", type=int, default=32, help="reconciles at once (mostly waiting on the API server)")
    p.add_argument("--resync", type=float, default=300.0, help="re-check an idle Rollout at least this often (s)")
    p.add_argument("--liveness", help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz")
    port = os.environ.get("MODSHIP_METRICS_PORT")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(port) if port else None,
        help="serve /metrics (env MODSHIP_METRICS_PORT)",
    )
    p.add_argument("--log-level", default=os.environ.get("MODSHIP_LOG_LEVEL", "INFO"))
    a = p.parse_args(argv)
    if a.renew_deadline >= a.lease_duration:
        p.error("--renew-deadline must be less than --lease-duration")
    logging.basicConfig(
        level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("kopf", "aiohttp", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return Options(
        namespaces=tuple(a.namespace),
        kubeconfig=a.kubeconfig,
        context=a.context,
        identity=a.identity,
        lease_name=a.lease_name,
        lease_namespace=a.lease_namespace,
        lease_duration=a.lease_duration,
        renew_deadline=a.renew_deadline,
        retry_period=a.retry_period,
        prometheus_url=a.prometheus_url,
        registry_url=a.registry,
        workers=a.workers,
        resync=a.resync,
        liveness=a.liveness,
        metrics_port=a.metrics_port,
    )


def main(argv: Sequence[str] | None = None) -> None:
    opts = parse(argv)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    try:
        runner(serve(opts))
    except ModshipError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(exc.exit_code) from None


if __name__ == "__main__":
    main()
