"""``modship notify ...``: try a sink, and see what could not be delivered."""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from controller.adapters.notify import Notifier, read_dead_letters
from controller.entrypoints.context import Context
from controller.entrypoints.output import Format, console, emit
from controller.errors import Unavailable
from controller.plan import notifications as plan
from controller.spec import notifications

app = typer.Typer(help="Notifications: CloudEvents of every rollout transition, to webhooks, Slack and Teams.")
OutputOpt = Annotated[Format, typer.Option("--output", "-o", help="table or json")]


@app.command()
def test(
    ctx: typer.Context,
    sink: Annotated[str, typer.Argument(help="a sink named in the notifications file")],
    system: Annotated[str, typer.Option(help="the system the test event names")] = "modship-test",
) -> None:
    """Send a test event to SINK now, with its retries (exit 6 when it cannot be delivered)."""
    obj: Context = ctx.obj
    spec = notifications.load(obj.settings.notifications_file)
    notifier = Notifier(spec, dead_letter=obj.settings.dead_letter_file)
    try:
        d = notifier.deliver(sink, plan.test_event(system, now=time.time(), links=spec.links))
    finally:
        notifier.close(timeout=0)
    if not d.delivered:
        raise Unavailable(f"sink {sink}: not delivered after {d.attempts} attempt(s): {d.error}")
    console.print(f"[green]delivered[/] to sink {sink} ({d.attempts} attempt(s), {d.seconds:.2f}s)")


@app.command("dead-letters")
def dead_letters(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="show the latest N")] = 50,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Notifications no sink accepted (kept in $MODSHIP_HOME/notifications/dead-letter.jsonl)."""
    obj: Context = ctx.obj
    rows = read_dead_letters(obj.settings.dead_letter_file, limit=limit)

    def render(entries: list[dict[str, Any]]) -> None:
        if not entries:
            console.print("no undelivered notifications")
            return
        t = Table("when", "sink", "event", "system", "attempts", "error")
        for e in entries:
            ev = e.get("event") or {}
            when = dt.datetime.fromtimestamp(float(e.get("at", 0)), dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
            t.add_row(when, str(e.get("sink")), str(ev.get("type")), str(ev.get("subject")), str(e.get("attempts")),
                      str(e.get("error")))  # fmt: skip
        console.print(t)

    emit(rows, output, render)
