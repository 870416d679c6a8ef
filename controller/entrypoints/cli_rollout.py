"""Progressive delivery verbs: deploy, promote, status, pause, resume, abort, retry, rollback,
undo, toggle, history, events. Every verb talks to the ``Control`` port: the local controller's HTTP
API, or with --context/--namespace the Rollout resource on Kubernetes. Every verb that changes
something takes ``--reason``, recorded with who asked in the events and the history."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from controller import ports
from controller.entrypoints.cli_up import actor_of
from controller.entrypoints.context import Context
from controller.entrypoints.output import Format, console, emit
from controller.entrypoints.views import checks_over_time, render
from controller.errors import SpecError
from controller.spec import control, parse
from controller.spec.control import Command

if TYPE_CHECKING:
    from controller.adapters.control_http import HttpControl
    from controller.adapters.kube_rollouts import KubeRollouts

OutputOpt = Annotated[Format, typer.Option("--output", "-o", help="table or json")]
SystemArg = Annotated[str, typer.Argument(help="the system's name")]
KubeContextOpt = Annotated[
    str | None, typer.Option("--context", help="act on the Rollout resource in this kubeconfig context")
]
NamespaceOpt = Annotated[str | None, typer.Option("--namespace", "-n", help="Kubernetes namespace of the Rollout")]
ReasonOpt = Annotated[str | None, typer.Option(help="why: recorded with who asked in the events and the history")]

EXIT_PROMOTED, EXIT_ROLLED_BACK, EXIT_WAIT_TIMEOUT = 0, 1, 7  # status --wait


def _local(ctx: typer.Context) -> HttpControl:
    from controller.adapters.control_http import HttpControl

    obj: Context = ctx.obj
    return HttpControl(obj.settings)


def _kube(context: str | None, namespace: str | None) -> KubeRollouts:
    from controller.adapters.kube_rollouts import KubeRollouts

    return KubeRollouts(context=context, namespace=namespace)


def _control(
    ctx: typer.Context, context: str | None = None, namespace: str | None = None, *, kube: KubeRollouts | None = None
) -> ports.Control:
    """The local controller's API, or, with --context/--namespace, the Rollout resource on Kubernetes
    (the same verbs, so moving between one machine and a cluster needs no second tool)."""
    if kube is not None or context or namespace:
        from controller.apply.kube_control import KubeControl

        return KubeControl(kube or _kube(context, namespace))
    return _local(ctx)


def register(app: typer.Typer) -> None:
    app.command()(deploy)
    app.command()(promote)
    app.command()(status)
    for verb, doc in (
        ("pause", "Pause the rollout where it is (traffic stays as it is)."),
        ("resume", "Resume a paused rollout (also releases a pause step or retries an inconclusive analysis)."),
        ("abort", "Abort the canary: 100 % to stable, the canary stopped (exit 5 when no rollout is in progress)."),
        ("retry", "Start an aborted canary again from step 0."),
        (
            "rollback",
            "Abort the canary in flight, or go back to the previous stable at once (within the rollback window).",
        ),
    ):
        app.command(name=verb, help=doc)(_verb(Command(verb)))
    app.command()(simulate)
    app.command()(undo)
    app.command()(toggle)
    app.command()(history)
    app.command()(events)


def _doc(path: Path) -> dict[str, Any]:
    docs = parse.load_documents(path)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise SpecError("expected one YAML document", source=str(path))
    return docs[0]


def deploy(
    ctx: typer.Context,
    system: Annotated[Path, typer.Argument(help="the System spec (YAML)")],
    rollout: Annotated[Path | None, typer.Option(help="the Rollout spec (steps, analysis, policies)")] = None,
    port: Annotated[int, typer.Option(help="the router's port: where clients send requests")] = 8080,
    reason: ReasonOpt = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Deploy a system on the local runtime: its first revision becomes stable behind a router."""
    req = control.DeployRequest(system=_doc(system), rollout=_doc(rollout) if rollout else None, port=port)
    out = _local(ctx).deploy(req, actor=actor_of(reason)).wire()
    emit(
        out,
        output,
        lambda d: console.print(f"deployed [bold]{d['system']}[/] revision {d['revision']} at {d['router']}"),
    )


def promote(
    ctx: typer.Context,
    system: SystemArg,
    modules: Annotated[
        list[str] | None, typer.Argument(help="module versions to roll out together (NAME@VERSION)")
    ] = None,
    spec: Annotated[Path | None, typer.Option(help="roll out this System spec instead")] = None,
    full: Annotated[bool, typer.Option("--full", help="skip the remaining steps: promote to 100 % now")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="override compatibility problems (recorded in history)")
    ] = False,
    gitops: Annotated[
        Path | None, typer.Option(help="edit the Rollout manifest in this Git working tree instead (GitOps)")
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Kubernetes: the revision to roll out (r + 12 hex)")] = None,
    context: KubeContextOpt = None,
    namespace: NamespaceOpt = None,
    reason: ReasonOpt = None,
    break_glass: Annotated[
        bool,
        typer.Option(
            "--break-glass", help="override the policy's change windows and soak (needs --reason; flagged everywhere)"
        ),
    ] = False,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Roll out new module versions as one canary revision (grouped), or --full to finish one."""
    if gitops is not None:
        from controller.apply import gitops as in_git

        obj: Context = ctx.obj
        done = in_git.promote_in_tree(
            obj.registry, gitops, system, modules or [], spec=spec, force=force, cache=obj.settings.module_cache
        )
        emit(done, output, lambda d: console.print(f"{d['file']}: {system} -> {d['revision']} (commit and push it)"))
        return
    req = control.PromoteRequest(
        modules=modules or [],
        full=full,
        force=force,
        revision=revision,
        system=_doc(spec) if spec else None,
        break_glass=break_glass,
    )
    out = _control(ctx, context, namespace).promote(system, req, actor=actor_of(reason)).wire()

    def render(d: dict[str, Any]) -> None:
        if "revision" not in d:
            console.print(f"{system}: promoting the canary to 100 %")
            return
        if d.get("rollback"):
            console.print(
                f"{system}: back to revision {d['number']} ({d['revision']}), the previous stable, still warm:"
                " at once, without canary steps"
            )
        else:
            console.print(f"{system}: rolling out revision {d['number']} ({d['revision']})")
        for note in d.get("changes", []):
            console.print(f"  {note}")
        for o in d.get("overrides", []):
            console.print(f"  [yellow]override:[/] {o}")

    emit(out, output, render)


def status(
    ctx: typer.Context,
    system: SystemArg,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="a live view, refreshed every second")] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help=f"exit {EXIT_PROMOTED} when promoted, {EXIT_ROLLED_BACK} when aborted or rolled back, "
            f"{EXIT_WAIT_TIMEOUT} on timeout",
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="seconds --wait waits")] = 600.0,
    checks: Annotated[
        bool,
        typer.Option("--checks", help="every check's measurements over time against its threshold (canary vs stable)"),
    ] = False,
    gitops: Annotated[Path | None, typer.Option(help="compare with the Rollout manifest in this Git tree")] = None,
    context: KubeContextOpt = None,
    namespace: NamespaceOpt = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """The rollout: phase, steps, weights, each check's measurements and verdict, traffic per revision;
    when it aborted, why (one sentence with the measurement that decided it).

    It also says when what runs differs from what the spec (or Git) asks for, e.g. after an automatic
    rollback, so that Git and the cluster never diverge silently."""
    kube = _kube(context, namespace) if context or namespace else None
    ctl = _control(ctx, context, namespace, kube=kube)

    def get() -> dict[str, Any]:
        return ctl.status(system).wire()

    if gitops is not None:
        from controller.apply import gitops as in_git

        d = get()
        if kube is not None:  # Kubernetes: the live Rollout against Git, field by field
            d["drift"] = [*d["drift"], *in_git.drift(gitops, kube.live(system))]
        else:
            want = in_git.wanted_revision(gitops, system)
            runs = (d.get("stable") or {}).get("revision")
            d["drift"] = d["drift"] + ([f"Git asks for {want}, {runs} serves"] if want and want != runs else [])
        emit(d, output, lambda x: console.print(render(x)))
        raise typer.Exit(1 if d["drift"] else 0)
    if wait:
        raise typer.Exit(_wait(get, timeout, output))
    view = checks_over_time if checks else render
    if watch:
        with Live(view(get()), console=console, refresh_per_second=2) as live:
            while True:
                time.sleep(1.0)
                live.update(view(get()))
    emit(get(), output, lambda d: console.print(view(d)))


def _wait(get: Any, timeout: float, output: Format) -> int:
    deadline = time.monotonic() + timeout
    d = get()
    while True:
        target = d.get("target")
        stable = (d.get("stable") or {}).get("revision")
        canary = (d.get("canary") or {}).get("revision")
        code = None
        if d["phase"] in ("Promoted", "Idle") and stable is not None and stable == target:
            code = EXIT_ROLLED_BACK if d["reason"] in ("RolledBack",) else EXIT_PROMOTED
        elif d["phase"] == "Aborted" and canary == target:
            code = EXIT_ROLLED_BACK
        if code is not None or time.monotonic() > deadline:
            code = EXIT_WAIT_TIMEOUT if code is None else code
            emit(d, output, lambda x: console.print(f"{x['system']}: {x['phase']} ({x['reason']}) {x['message']}"))
            return code
        time.sleep(0.5)
        d = get()


def _verb(verb: Command) -> Any:
    def run(
        ctx: typer.Context,
        system: SystemArg,
        context: KubeContextOpt = None,
        namespace: NamespaceOpt = None,
        reason: ReasonOpt = None,
        output: OutputOpt = Format.TABLE,
    ) -> None:
        out = _control(ctx, context, namespace).command(system, verb, actor=actor_of(reason)).wire()
        emit(out, output, lambda d: console.print(d.get("message") or f"{system}: {verb} requested"))

    run.__name__ = verb.value
    return run


def undo(
    ctx: typer.Context,
    system: SystemArg,
    to_revision: Annotated[int | None, typer.Option(help="revision number (see history); default the previous")] = None,
    context: KubeContextOpt = None,
    namespace: NamespaceOpt = None,
    reason: ReasonOpt = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Go back to an earlier revision: instant while it is still warm, else a normal rollout."""
    req = control.UndoRequest(to_revision=to_revision)
    out = _control(ctx, context, namespace).undo(system, req, actor=actor_of(reason)).wire()
    emit(out, output, lambda d: console.print(f"{system}: back to revision {d['number']} ({d['revision']})"))


def toggle(
    ctx: typer.Context,
    system: SystemArg,
    flag: Annotated[str, typer.Argument(help="the feature flag")],
    state: Annotated[str, typer.Argument(help="on or off")],
    percent: Annotated[float, typer.Option(help="share of requests with the flag on (0-100)")] = 100.0,
    context: KubeContextOpt = None,
    namespace: NamespaceOpt = None,
    reason: ReasonOpt = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Turn a feature flag on or off (for a percentage of requests) on every revision of a system."""
    if state not in ("on", "off"):
        raise SpecError(f"state must be on or off, got {state!r}", field="STATE")
    req = control.request(control.ToggleRequest, {"flag": flag, "enabled": state == "on", "percent": percent})
    out = _control(ctx, context, namespace).toggle(system, req, actor=actor_of(reason)).wire()
    emit(out, output, lambda d: console.print(f"{system}: flag {flag} {state} at {percent:g} %"))


def history(ctx: typer.Context, system: SystemArg, output: OutputOpt = Format.TABLE) -> None:
    """Every revision of a system: its modules, what changed, how its rollouts ended."""
    out = [x.wire() for x in _local(ctx).history(system)]

    def show(rows: list[dict[str, Any]]) -> None:
        t = Table("#", "revision", "created", "changed", "asked by", "outcomes", "now", box=None)
        for r in rows:
            created = time.strftime("%H:%M:%S", time.localtime(r["created"]))
            outcomes = ", ".join(
                o["outcome"] + (f" ({o['reason']})" if o["reason"] else "") + _by(o.get("actor"), " by ")
                for o in r["outcomes"]
            )
            changed = " ".join(r["changed"]) or "-"
            asked = _by(r.get("actor")) or "-"
            t.add_row(str(r["number"]), r["revision"], created, changed, asked, outcomes, r["role"] or "")
        console.print(t)

    emit(out, output, show)


def _by(actor: dict[str, Any] | None, prefix: str = "") -> str:
    """``alice ("p99 over budget")`` for a table; "" when nobody asked."""
    if not actor:
        return ""
    return prefix + str(actor["user"]) + (f' ("{actor["reason"]}")' if actor.get("reason") else "")


def events(ctx: typer.Context, system: SystemArg, output: OutputOpt = Format.TABLE) -> None:
    """The timeline of a system's rollouts."""
    out = [x.wire() for x in _local(ctx).events(system)]

    def show(rows: list[dict[str, Any]]) -> None:
        for e in rows:
            at = time.strftime("%H:%M:%S", time.localtime(e["at"]))
            style = "yellow" if e["warning"] else ""
            console.print(
                f"{at} [{style}]{e['reason']:<24}[/] {e['message']}"
                if style
                else f"{at} {e['reason']:<24} {e['message']}"
            )

    emit(out, output, show)


def simulate(
    rollout: Annotated[Path, typer.Argument(help="a Rollout spec (YAML)")],
    fail: Annotated[list[str] | None, typer.Option(help="make this check fail (repeatable)")] = None,
    fail_after: Annotated[float, typer.Option(help="seconds into the rollout when --fail checks start failing")] = 0.0,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Dry run: the real state machine on in-memory adapters, in virtual time (no traffic touched)."""
    from controller.adapters.memory import MemoryMetrics, MemoryStore, MemoryTarget
    from controller.apply import simulate as sim
    from controller.spec import rollout as rollout_spec

    r = rollout_spec.from_document(_doc(rollout), source=str(rollout))
    unknown = sorted(set(fail or []) - {c.name for c in r.spec.analysis.checks})
    if unknown:
        raise SpecError(f"no check named {unknown[0]!r} in the rollout", field="--fail")
    ticks, phase, took = sim.run(
        r, store=MemoryStore(), target=MemoryTarget(), metrics=MemoryMetrics,
        failing=frozenset(fail or []), fail_after=fail_after,
    )  # fmt: skip
    data = {"phase": phase.value, "seconds": round(took, 1),
            "timeline": [{"at": round(t.at, 1), "reason": t.event.reason, "message": t.event.message,
                          "weight": t.weight} for t in ticks]}  # fmt: skip

    def show(d: dict[str, Any]) -> None:
        t = Table("t (s)", "event", "weight", "", box=None)
        for e in d["timeline"]:
            t.add_row(f"{e['at']:.1f}", e["reason"], f"{e['weight']:g} %", e["message"])
        console.print(t)
        console.print(f"→ {d['phase']} after {d['seconds']:g}s of (virtual) time, all checks passing"
                      + (f" except {', '.join(fail or [])}" if fail else ""))  # fmt: skip

    emit(data, output, show)
