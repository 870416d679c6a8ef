"""``modship system ...``: validate, compat, lock, build."""

from __future__ import annotations

import datetime as dt
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


@app.command("validate")
def validate_(ctx: typer.Context, file: FileArg, today: TodayOpt = None, output: OutputOpt = Format.TABLE) -> None:
    """Check every edge, module, digest, deprecation and stability rule; report every violation (exit 2)."""
    checked = _checked(ctx, file, today)
    r = checked.report
    data = {
        "system": checked.system.metadata.name,
        "valid": r.ok,
        "violations": [v.to_json() for v in r.violations],
        "modules": {ref: mv.ref for ref, mv in r.resolved.items()},
    }

    def render(_: Any) -> None:
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
