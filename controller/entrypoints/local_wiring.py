"""The local runtime's composition root: the concrete adapters behind the local controller's ports.

``modship up`` and the tests that run the controller's API in process build it here, from the
settings alone, so that they run on the same parts.
"""

from __future__ import annotations

from controller import ports, settings
from controller.adapters import factory, notify
from controller.adapters.audit_log import AuditLog
from controller.adapters.bento import BentoStore
from controller.adapters.builtin_metrics import BuiltinSource
from controller.adapters.gates import HttpGates
from controller.adapters.loadtest import LoadTests
from controller.adapters.local_governance import LocalGovernance
from controller.adapters.local_runtime import LocalRuntime
from controller.adapters.local_store import LocalStore
from controller.adapters.prometheus_sd import Publisher
from controller.apply.local_controller import LocalController, LocalParts


def parts(cfg: settings.Settings, *, registry: ports.Registry | None = None) -> LocalParts:
    """The local adapters for ``cfg``; ``registry`` replaces the one the settings name."""
    store = LocalStore(cfg.home)

    def runtime(system: str, router_port: int) -> ports.Runtime:
        return LocalRuntime(store, system, bentoml_home=cfg.bentoml_home, router_port=router_port)

    def prometheus(url: str) -> ports.MetricsSource:
        from controller.adapters.prometheus import PrometheusSource

        return PrometheusSource(url)

    return LocalParts(
        store=store,
        governance=LocalGovernance(cfg.home),
        audit=AuditLog(cfg.audit_file),
        targets=Publisher(cfg.home),
        gates=HttpGates(),
        bentos=BentoStore(cfg.bentoml_home),
        load_tests=LoadTests(cfg.home),
        runtime=runtime,
        builtin=lambda url, token: BuiltinSource(url, token=token),
        prometheus=prometheus,
        registry=(lambda: registry) if registry is not None else (lambda: factory.registry(cfg)),
        notifier=notify.from_file(cfg.notifications_file, mlflow=_mlflow_url(cfg), dead_letter=cfg.dead_letter_file),
    )


def controller(
    cfg: settings.Settings, *, registry: ports.Registry | None = None, api: tuple[str, str] | None = None
) -> LocalController:
    """A local controller on the local adapters (not started: ``local_controller.running`` runs one)."""
    return LocalController(cfg, parts(cfg, registry=registry), api=api)


def _mlflow_url(cfg: settings.Settings) -> str | None:
    """The registry's URL when it is a server people can open (not the embedded SQLite file)."""
    return cfg.registry_uri if cfg.registry_uri.startswith(("http://", "https://")) else None
