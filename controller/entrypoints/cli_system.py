"""``modship system ...``: validate, compat, lock, build."""

from __future__ import annotations

import datetime as dt
import enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from controller.adapters import bento
from controller.apply import systems
from controller.compose import revision
from controller.compose.revision import Lock
from controller.entrypoints.context import Context
from controller.entrypoints.output import Format, console, emit
from controller.errors import ModshipError, SpecError
from controller.plan import capabilities
from controller.spec import parse
from controller.spec.rollout import Rollout
from controller.spec.system import System

app = typer.Typer(
    help="Compose systems from modules: validate, lock to a revision, build a Bento.", no_args_is_help=True
)
OutputOpt = Annotated[Format, typer.Option("--output", "-o", help="table or json")]
FileArg = Annotated[Path, typer.Argument(help="a System spec (YAML)")]
TodayOpt = Annotated[str | None, typer.Option(help="check deprecations as of this date (YYYY-MM-DD)")]


def _today(value: str | None) -> dt.date:
    if value is None:
        return dt.date.today()
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise SpecError(f"{value!r} is not a date (YYYY-MM-DD)", field="--today") from None


def _checked(ctx: typer.Context, file: Path, today: str | None) -> systems.Checked:
    obj: Context = ctx.obj
    loaded = systems.load_input(file)
    system = loaded.system if isinstance(loaded, Lock) else loaded
    return systems.check(obj.registry, system, cache=obj.settings.module_cache, today=_today(today))


class TrafficChoice(enum.StrEnum):
    MODSHIP = "modship"
    REPLICAS = "replicas"
    GATEWAY_API = "gateway-api"
    ISTIO = "istio"
    NGINX = "nginx"


_ROUTERS = {
    TrafficChoice.MODSHIP: capabilities.Router.MODSHIP,
    TrafficChoice.REPLICAS: capabilities.Router.REPLICAS,
    TrafficChoice.GATEWAY_API: capabilities.Router.GATEWAY_API,
    TrafficChoice.ISTIO: capabilities.Router.ISTIO,
    TrafficChoice.NGINX: capabilities.Router.NGINX,
}


def _gaps(rollout: Path | None, traffic: TrafficChoice | None) -> list[capabilities.Gap]:
    if rollout is None:
        if traffic is not None:
            raise SpecError("--traffic needs --rollout FILE (the checks to weigh)", field="--traffic")
        return []
    r = parse.load(Rollout, rollout)
    return capabilities.gaps(r, _ROUTERS[traffic] if traffic is not None else None)


@app.command("validate")
def validate_(
    ctx: typer.Context,
    file: FileArg,
    today: TodayOpt = None,
    rollout: Annotated[
        Path | None, typer.Option(help="also warn about what its traffic provider cannot serve (a Rollout spec)")
    ] = None,
    traffic: Annotated[
        TrafficChoice | None, typer.Option(help="with --rollout: weigh this provider instead of the Rollout's own")
    ] = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Check every edge, module, digest, deprecation and stability rule; report every violation (exit 2).
    With --rollout, also warn about every check, step and policy its traffic provider cannot serve."""
    gaps = _gaps(rollout, traffic)
    checked = _checked(ctx, file, today)
    r = checked.report
    data = {
        "system": checked.system.metadata.name,
        "valid": r.ok,
        "violations": [v.to_json() for v in r.violations],
        "modules": {ref: mv.ref for ref, mv in r.resolved.items()},
        "warnings": [g.to_json() for g in gaps],
    }

    def warn() -> None:
        for g in gaps:
            console.print(f"[yellow]warning[/] {g.field}: {g.message}", highlight=False, soft_wrap=True)

    def render(_: Any) -> None:
        warn()
        if r.ok:
            console.print(
                f"[green]✓[/] {file}: system [bold]{data['system']}[/] is valid "
                f"({len(checked.system.spec.steps)} steps, {len(r.edges)} edges, {len(r.resolved)} modules)"
            )
            return
        console.print(f"[red]✗[/] {file}: {len(r.violations)} violation(s)")
        t = Table("step", "field", "reason", box=None)
        for v in r.violations:
            t.add_row(v.step, v.field, v.reason)
        console.print(t)

    emit(data, output, render)
    if not r.ok:
        raise typer.Exit(2)


@app.command()
def compat(ctx: typer.Context, file: FileArg, today: TodayOpt = None, output: OutputOpt = Format.TABLE) -> None:
    """The per-edge compatibility report of a system."""
    checked = _checked(ctx, file, today)
    edges = [e.to_json() for e in checked.report.edges]

    def render(_: Any) -> None:
        t = Table("step", "input", "from", "producer → consumer", "result")
        for e in checked.report.edges:
            via = f" → {e.adapter} → " if e.adapter else " → "
            res = "[green]✓[/]" if not e.problems else "[red]✗[/] " + "; ".join(str(p) for p in e.problems)
            t.add_row(e.step, e.port, e.source, f"{e.producer}{via}{e.consumer}", res)
        console.print(t)

    emit({"system": checked.system.metadata.name, "edges": edges}, output, render)
    if any(not e["compatible"] for e in edges):
        raise typer.Exit(2)


@app.command("lock")
def lock_(
    ctx: typer.Context,
    file: FileArg,
    out: Annotated[Path | None, typer.Option(help="lock file to write (default: FILE with .lock.yaml)")] = None,
    today: TodayOpt = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Pin every module ref to a version and digest; write the lock file naming the revision."""
    checked = _checked(ctx, file, today)
    systems.raise_violations(checked.report, str(file))
    lk = systems.lock(checked)
    path = out or file.with_name(file.name.removesuffix(".yaml").removesuffix(".yml") + ".lock.yaml")
    revision.write(lk, path)
    emit(
        {"system": lk.name, "revision": lk.revision, "lock": str(path), "modules": lk.requested},
        output,
        lambda d: console.print(f"locked [bold]{lk.name}[/] revision [bold]{lk.revision}[/] → {path}"),
    )


@app.command()
def build(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="a System spec or its lock file")],
    today: TodayOpt = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Validate, lock, run the contract tests (golden inputs + smoke set), then build the Bento."""
    obj: Context = ctx.obj
    lk, local = prepare(obj, file, today=_today(today))
    tag = bento.build(lk, local, bentoml_home=obj.settings.bentoml_home, policy=obj.signing)
    emit(
        {"system": lk.name, "revision": lk.revision, "bento": tag},
        output,
        lambda d: console.print(f"built Bento [bold]{tag}[/] (contract tests passed)"),
    )


def prepare(obj: Context, file: Path, *, today: dt.date) -> tuple[Lock, dict[str, Path]]:
    """The lock and verified module copies for a spec or lock file, contract tests passed."""
    loaded = systems.load_input(file)
    system: System = loaded.system if isinstance(loaded, Lock) else loaded
    checked = systems.check(obj.registry, system, cache=obj.settings.module_cache, today=today)
    systems.raise_violations(checked.report, str(file))
    lk = systems.lock(checked)
    if isinstance(loaded, Lock) and loaded.revision != lk.revision:
        raise SpecError(
            f"lock names revision {loaded.revision} but its modules now give {lk.revision}", source=str(file)
        )
    failures = systems.contract_tests(lk, checked.local)
    if failures:
        raise ModshipError("contract tests failed, nothing built:\n  " + "\n  ".join(failures))
    return lk, checked.local
