"""The local controller's own verbs: ``up`` (run it, serving the secured API), ``down``, and
``token`` (credentials of the API: files in the data directory, so only its owner manages them)."""

from __future__ import annotations

import getpass
import ipaddress
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from controller import atomic
from controller.entrypoints.context import Context
from controller.entrypoints.output import Format, console, emit, err_console
from controller.errors import SpecError
from controller.spec import control

log = logging.getLogger("modship.up")
OutputOpt = Annotated[Format, typer.Option("--output", "-o", help="table or json")]
UserArg = Annotated[str, typer.Argument(help="the user name the token acts as")]

tokens_app = typer.Typer(
    help="Tokens of the local control API: one per user, stored as hashes in $MODSHIP_HOME/tokens.json.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
    app.command("prometheus-config")(prometheus_config)
    app.add_typer(tokens_app, name="token")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, tls_cert: Path | None, tls_key: Path | None, insecure_bind: bool) -> bool:
    """Whether the API is served over TLS; refuses a non-loopback address without TLS or the
    explicit ``--insecure-bind``."""
    if (tls_cert is None) != (tls_key is None):
        raise SpecError("give both --tls-cert and --tls-key", field="--tls-key" if tls_key is None else "--tls-cert")
    for opt, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if path is not None and not path.is_file():
            raise SpecError(f"{path} is not a file", field=opt)
    tls = tls_cert is not None
    if not is_loopback(host) and not tls and not insecure_bind:
        raise SpecError(
            f"{host} is not a loopback address: serve the API over TLS (--tls-cert/--tls-key) "
            "or pass --insecure-bind to accept tokens in clear text on the network",
            field="--host",
        )
    return tls


def up(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(help="the API's address (default loopback; any other needs TLS or --insecure-bind)")
    ] = "127.0.0.1",
    api_port: Annotated[int, typer.Option(help="the controller API port (0: any free port)")] = 0,
    tls_cert: Annotated[Path | None, typer.Option(help="serve the API over TLS with this certificate (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="the certificate's private key (PEM)")] = None,
    insecure_bind: Annotated[
        bool, typer.Option("--insecure-bind", help="allow a non-loopback --host without TLS (tokens travel in clear)")
    ] = False,
    stop_on_exit: Annotated[
        bool,
        typer.Option(
            help="stop revisions and routers when the controller exits "
            "(default: they keep serving; `modship down` stops them)"
        ),
    ] = False,
) -> None:
    """Run the local controller (foreground): reconcile every deployed system and serve the API.

    It makes a token for you (the OS user running it) and writes it with its address to
    $MODSHIP_HOME/controller.json (mode 0600), where the CLI finds both."""
    import uvicorn

    from controller.adapters.local_runtime import free_port
    from controller.adapters.tokens import TokenStore
    from controller.apply import local_controller
    from controller.entrypoints import api, guard, local_wiring
    from controller.entrypoints.context import quiet_libraries

    obj: Context = ctx.obj
    tls = check_bind(host, tls_cert=tls_cert, tls_key=tls_key, insecure_bind=insecure_bind)
    quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    if insecure_bind and not tls and not is_loopback(host):
        err_console.print(f"[yellow]warning:[/] the API listens on {host} without TLS: tokens travel in clear text")
        log.warning("--insecure-bind: the API listens on %s without TLS", host)
    cfg = obj.settings
    cfg.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    port = api_port or free_port()
    scheme = "https" if tls else "http"
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    address = f"{shown if ':' not in shown else f'[{shown}]'}:{port}"
    url = f"{scheme}://{address}"
    store = TokenStore(cfg.home)
    parts = local_wiring.parts(cfg)
    with local_controller.running(cfg, parts, stop_processes=stop_on_exit, api=(scheme, address)) as c:
        app = api.app(c, user_of=store.user_of, origins=guard.own_origins(scheme, shown, port))
        ssl: dict[str, Any] = {"ssl_certfile": str(tls_cert), "ssl_keyfile": str(tls_key)} if tls else {}
        # open dashboards' event streams never end on their own: give them 2 s at shutdown
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2, **ssl)
        server = uvicorn.Server(config)
        user = getpass.getuser()
        info = {"pid": os.getpid(), "url": url, "user": user, "token": store.create(user), "started": time.time()}
        if tls:
            info["ca"] = str(tls_cert.resolve()) if tls_cert else None
        atomic.write_text(local_controller.controller_file(cfg), json.dumps(info), mode=0o600)
        console.print(
            f"modship controller on {url} managing {', '.join(c.store.systems()) or 'no systems yet'} "
            f"(data: {cfg.home}; you are {user})"
        )
        server.run()  # returns on SIGINT/SIGTERM (uvicorn handles both)
    local_controller.controller_file(cfg).unlink(missing_ok=True)


def down(
    ctx: typer.Context,
    reason: Annotated[str | None, typer.Option(help="why (recorded in each system's events)")] = None,
) -> None:
    """Stop the local controller and everything it runs (revisions and routers)."""
    from controller.adapters.control_http import HttpControl

    obj: Context = ctx.obj
    local = HttpControl(obj.settings)
    actor = actor_of(reason)
    for s in local.systems():
        local.delete(s.system, actor=actor)
    os.kill(local.pid, signal.SIGTERM)
    console.print("stopped")


def prometheus_config(
    ctx: typer.Context,
    interval: Annotated[str, typer.Option(help="scrape interval")] = "5s",
    job: Annotated[str, typer.Option(help="the job's name")] = "modship",
) -> None:
    """Print a ready prometheus.yml that finds every revision, router and the controller through
    the file $MODSHIP_HOME/prometheus/targets.json, which `modship up` keeps current (no ports to copy)."""
    from controller.adapters import prometheus_sd

    obj: Context = ctx.obj
    typer.echo(prometheus_sd.scrape_config(obj.settings.home, interval=interval, job=job), nl=False)


def actor_of(reason: str | None) -> control.Actor:
    """The actor a CLI verb sends: the backend replaces the user by the one it authenticated."""
    try:
        return control.request(control.Actor, {"user": getpass.getuser(), "reason": reason})
    except SpecError as exc:
        raise SpecError(exc.reason, field="--reason") from None


# -- tokens ----------------------------------------------------------------------------------------


def _store(ctx: typer.Context) -> Any:
    from controller.adapters.tokens import TokenStore

    obj: Context = ctx.obj
    obj.settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return TokenStore(obj.settings.home)


@tokens_app.command("create")
def token_create(ctx: typer.Context, user: UserArg, output: OutputOpt = Format.TABLE) -> None:
    """Make a token for USER (replacing USER's previous one) and print it once: give it to them;
    they act with MODSHIP_TOKEN=<token>."""
    token = _store(ctx).create(user)
    emit({"user": user, "token": token}, output, lambda d: typer.echo(d["token"]))


@tokens_app.command("list")
def token_list(ctx: typer.Context, output: OutputOpt = Format.TABLE) -> None:
    """Users with a token and when it was made (tokens themselves are never stored)."""
    users = _store(ctx).users()

    def show(d: dict[str, float]) -> None:
        t = Table("user", "created", box=None)
        for u, at in d.items():
            t.add_row(u, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)))
        console.print(t)

    emit(users, output, show)


@tokens_app.command("revoke")
def token_revoke(ctx: typer.Context, user: UserArg, output: OutputOpt = Format.TABLE) -> None:
    """Revoke USER's token: refused by the API from the next request on."""
    _store(ctx).revoke(user)
    emit({"user": user, "revoked": True}, output, lambda d: console.print(f"revoked the token of {user}"))
