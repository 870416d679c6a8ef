"""Governance verbs: approve, reject, policy set|show, audit [verify].

``approve``/``reject`` go through the ``Control`` port (the local API as the authenticated user, or
on Kubernetes an Approval object the API server attributes to the caller). ``policy`` and ``audit``
read and write ``$MODSHIP_HOME`` directly: they need the filesystem access of its owner.
"""

from __future__ import annotations

import datetime as dt
import getpass
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from controller import settings
from controller.adapters.audit_log import AuditLog
from controller.adapters.local_governance import LocalGovernance
from controller.apply import governance
from controller.entrypoints.cli_rollout import KubeContextOpt, NamespaceOpt, OutputOpt, ReasonOpt, SystemArg, _control
from controller.entrypoints.cli_up import actor_of
from controller.entrypoints.context import Context
from controller.entrypoints.output import Format, console, emit
from controller.errors import ModshipError, SpecError
from controller.plan import audit as chain
from controller.plan.audit import Action
from controller.spec import control, parse
from controller.spec import policy as policy_spec
from controller.spec.rollout import seconds

RevisionArg = Annotated[str | None, typer.Argument(help="the revision decided on (default: the one awaiting)")]
EXIT_TAMPERED = 1

policy_app = typer.Typer(
    help="The governance policy: who may promote and approve, windows, soak.", no_args_is_help=True
)
audit_app = typer.Typer(help="The hash-chained audit log: show and filter it, or verify it.")


def register(app: typer.Typer) -> None:
    app.command()(approve)
    app.command()(reject)
    app.add_typer(policy_app, name="policy")
    app.add_typer(audit_app, name="audit")


def _decide(ctx: typer.Context, system: str, revision: str | None, *, approve: bool, reason: str | None,
            context: str | None, namespace: str | None, output: Format) -> None:  # fmt: skip
    req = control.ApproveRequest(revision=revision, approve=approve)
    out = _control(ctx, context, namespace).approve(system, req, actor=actor_of(reason)).wire()

    def show(d: dict[str, Any]) -> None:
        verb = "approved" if d["approve"] else "rejected"
        rest = f"; still missing: {'; '.join(d['missing'])}" if d["approve"] and d["missing"] else ""
        console.print(f"{system}: {d['revision']} {verb}{rest}")

    emit(out, output, show)


def approve(
    ctx: typer.Context,
    system: SystemArg,
    revision: RevisionArg = None,
    reason: ReasonOpt = None,
    context: KubeContextOpt = None,
    namespace: NamespaceOpt = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Approve the change awaiting approval (never your own); it becomes stable once the policy's
    approvals are in and its soak has elapsed."""
    _decide(ctx, system, revision, approve=True, reason=reason, context=context, namespace=namespace, output=output)


def reject(
    ctx: typer.Context,
    system: SystemArg,
    revision: RevisionArg = None,
    reason: ReasonOpt = None,
    context: KubeContextOpt = None,
    namespace: NamespaceOpt = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Reject the change in flight: its canary is aborted, 100 % to stable."""
    _decide(ctx, system, revision, approve=False, reason=reason, context=context, namespace=namespace, output=output)


def _cfg(ctx: typer.Context) -> settings.Settings:
    obj: Context = ctx.obj
    return obj.settings


@policy_app.command("set")
def policy_set(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="a Policy document (YAML)")],
    reason: ReasonOpt = None,
) -> None:
    """Put a policy in force for the local runtime (checked first: nothing is written if it is bad)."""
    docs = parse.load_documents(file)
    if len(docs) != 1:
        raise SpecError("expected one YAML document", source=str(file))
    p = policy_spec.from_document(docs[0], source=str(file))
    cfg = _cfg(ctx)
    gov = LocalGovernance(cfg.home)
    before = gov.policy().dump() if gov.policy_path.exists() else None
    gov.set_policy(p)
    actor = actor_of(reason)
    body = governance.entry(
        Action.POLICY,
        system=None,
        actor=actor.user,
        reason=actor.reason,
        now=time.time(),
        before=before,
        after=p.dump(),
    )
    AuditLog(cfg.audit_file).append(body)
    console.print(f"policy {p.metadata.name} in force ({gov.policy_path})")


@policy_app.command("show")
def policy_show(ctx: typer.Context, output: OutputOpt = Format.TABLE) -> None:
    """The policy in force (none: every change is allowed, no approvals)."""
    p = LocalGovernance(_cfg(ctx).home).policy()
    import yaml

    emit(p.dump(), output, lambda d: console.print(yaml.safe_dump(d, sort_keys=False).rstrip()))


FileOpt = Annotated[
    Path | None,
    typer.Option("--file", help="another audit log, e.g. copied from the operator's volume (its .head beside it)"),
]


def _log(ctx: typer.Context, file: Path | None) -> AuditLog:
    if file is not None and not file.is_file():
        raise SpecError("no such file", field="--file", source=str(file))
    return AuditLog(file or _cfg(ctx).audit_file)


def _since(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return time.time() - seconds(value)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise SpecError(f"{value!r} is neither a duration (30m, 2h) nor an ISO time", field="--since") from None
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()


@audit_app.callback(invoke_without_command=True)
def audit(
    ctx: typer.Context,
    system: Annotated[str | None, typer.Option(help="only this system")] = None,
    actor: Annotated[str | None, typer.Option(help="only what this user (or modship-controller) did")] = None,
    action: Annotated[str | None, typer.Option(help=f"only this action: {', '.join(a.value for a in Action)}")] = None,
    since: Annotated[
        str | None, typer.Option(help="only entries newer than a duration ago (2h) or an ISO time")
    ] = None,
    file: FileOpt = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Show the audit log: who did what, when and why, with before and after."""
    if ctx.invoked_subcommand is not None:
        return
    if action is not None and action not in {a.value for a in Action}:
        raise SpecError(f"unknown action {action!r}", field="--action")
    q = chain.Query(system=system, actor=actor, action=action, since=_since(since))
    rows = chain.select(_log(ctx, file).entries(), q)

    def show(entries: list[dict[str, Any]]) -> None:
        t = Table("#", "time (UTC)", "actor", "action", "system", "reason", "after", box=None)
        for e in entries:
            t.add_row(str(e.get("seq")), str(e.get("time", ""))[:19], str(e.get("actor")), str(e.get("action")),
                      e.get("system") or "-", e.get("reason") or "", _short(e.get("after")))  # fmt: skip
        console.print(t)

    emit(rows, output, show)


def _short(v: Any) -> str:
    if isinstance(v, dict):
        return " ".join(f"{k}={x}" for k, x in v.items() if x is not None and not isinstance(x, dict | list))[:80]
    return "" if v is None else str(v)[:80]


@audit_app.command("verify")
def audit_verify(ctx: typer.Context, file: FileOpt = None, output: OutputOpt = Format.TABLE) -> None:
    """Check the hash chain: exit 1 naming the first entry that was edited, removed or reordered."""
    log = _log(ctx, file)
    broken = log.verify()
    lines = log.lines()
    head = log.anchor()
    data: dict[str, Any] = {"ok": broken is None, "entries": len(lines), "file": str(log.path),
                            "head": {"seq": head[0], "hash": head[1]} if head else None}  # fmt: skip
    if broken is not None:
        data["broken"] = {"line": broken.line, "seq": broken.seq, "why": broken.why}

    def show(d: dict[str, Any]) -> None:
        if d["ok"]:
            h = d["head"]
            console.print(f"audit log intact: {d['entries']} entries" + (f", head {h['hash'][:16]}…" if h else ""))
        else:
            b = d["broken"]
            console.print(f"[red]audit log broken[/] at line {b['line']} (seq {b['seq']}): {b['why']}")

    emit(data, output, show)
    if broken is not None:
        raise typer.Exit(EXIT_TAMPERED)


def record_registration(cfg: settings.Settings, refs: list[str]) -> None:
    """Audit module versions registered by this CLI (the registry is written directly, not via the API)."""
    if not refs:
        return
    try:
        body = governance.entry(Action.REGISTER, system=None, actor=getpass.getuser(), reason=None, now=time.time(),
                                after={"modules": refs})  # fmt: skip
        AuditLog(cfg.audit_file).append(body)
    except (OSError, ModshipError) as exc:  # the registration itself succeeded: say so, do not fail it
        console.print(f"[yellow]warning:[/] could not write the audit log: {exc}")
