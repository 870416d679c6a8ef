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

from controller.adapters.kube import api as kube_api
from controller.adapters.kube import caches
from controller.adapters.kube.lease import LeaseElector
from controller.apply.scheduler import Scheduler
from controller.entrypoints.operator_cycle import Key, Operator, Options
from controller.errors import ModshipError

log = logging.getLogger("modship.operator")
GROUP, VERSION = kube_api.GROUP_VERSION.split("/")


def _settings(opts: Options) -> Any:
    import kopf

    s = kopf.OperatorSettings()
    s.peering.standalone = True  # one acting replica is decided by our Lease, not kopf's peering
    s.scanning.disabled = True  # serve what exists at start; no cluster-wide CRD/namespace watches
    s.posting.enabled = False  # Events come from the leader only (EventRecorder), never from kopf
    s.posting.level = logging.WARNING
    # No changing/daemon handlers are registered, so kopf keeps no progress or diff-base; should one
    # be added, it stores them in annotations (our status schema has no room for kopf's), and the
    # diff-base storage must go back to kopf.AnnotationsDiffBaseStorage(prefix="kopf.modship.dev").
    s.persistence.finalizer = "kopf.modship.dev/finalizer"
    s.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.modship.dev")
    s.persistence.diffbase_storage = _no_diffbase()
    s.watching.label_selectors["apps", "deployments"] = "app.kubernetes.io/managed-by=modship"
    s.watching.chunk_size = 500
    s.watching.connect_timeout = 10
    s.watching.server_timeout = 600
    s.networking.request_timeout = 30
    s.networking.connect_timeout = 10
    return s


def _no_diffbase() -> Any:
    """kopf builds the diff base of every watched object on every event (a deep copy of the whole
    body, a tenth of the operator's CPU under load) for change handlers to compare; the operator
    has only ``on.event`` handlers, which never read it: an empty essence, old and new alike."""
    import kopf

    class NoDiffBase(kopf.DiffBaseStorage):
        def build(self, *, body: Any, extra_fields: Any = None) -> Any:
            return {}

        def fetch(self, *, body: Any) -> Any:
            return {}

        def store(self, *, body: Any, patch: Any, essence: Any) -> None:
            return None

    return NoDiffBase()


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
        if op.notifier is not None:
            op.notifier.close(timeout=2.0)
        op.loads.close()
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
    p.add_argument(
        "--notifications",
        default=os.environ.get("MODSHIP_NOTIFICATIONS"),
        help="sinks and subscriptions for CloudEvents of every transition (env MODSHIP_NOTIFICATIONS)",
    )
    p.add_argument(
        "--dead-letter",
        default=os.environ.get("MODSHIP_DEAD_LETTER", "/tmp/modship/dead-letter.jsonl"),
        help="where undeliverable notifications are kept (env MODSHIP_DEAD_LETTER)",
    )
    p.add_argument(
        "--audit-file",
        default=os.environ.get("MODSHIP_AUDIT_FILE"),
        help="append the hash-chained audit log to this file, on a persistent volume (env MODSHIP_AUDIT_FILE)",
    )
    p.add_argument(
        "--datasets",
        default=os.environ.get("MODSHIP_DATASETS", "/etc/modship/datasets"),
        help="where a relative spec.loadTest.dataset is found (env MODSHIP_DATASETS)",
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
        notifications=a.notifications,
        dead_letter=a.dead_letter,
        audit_file=a.audit_file,
        datasets=a.datasets,
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
