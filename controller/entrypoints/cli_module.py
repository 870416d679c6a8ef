"""``modship module ...``: register, sign, list, show, alias, deprecate, verify, compat."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from controller.adapters import factory
from controller.apply import adopt as adopt_case
from controller.apply import modules
from controller.entrypoints.context import Context
from controller.entrypoints.output import Format, console, emit
from controller.errors import SpecError
from controller.registry import bundle as bundles
from controller.registry import signing
from controller.registry.versions import ModuleVersion
from controller.spec import refs

app = typer.Typer(
    help="Register pretrained modules with contracts, inspect them, check compatibility.",
    no_args_is_help=True,
)
OutputOpt = Annotated[Format, typer.Option("--output", "-o", help="table or json")]


def _ctx(ctx: typer.Context) -> Context:
    obj: Context = ctx.obj
    return obj


@app.command()
def register(
    ctx: typer.Context,
    dirs: Annotated[list[Path], typer.Argument(help="module directories, each holding a module.yaml")],
    skip_existing: Annotated[bool, typer.Option(help="do not re-register a directory already registered")] = False,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Register module versions: artifact, role, contract, metadata and SHA-256 digests, all or nothing."""
    policy = _ctx(ctx).signing
    done = modules.register(lambda: _ctx(ctx).registry, dirs, skip_existing=skip_existing, policy=policy)
    data = [dict(_summary(r.version), skipped=r.skipped) for r in done]
    from controller.entrypoints.cli_governance import record_registration

    record_registration(_ctx(ctx).settings, [f"{d['name']}@{d['version']}" for d in data if not d["skipped"]])

    def render(rows: list[dict[str, Any]]) -> None:
        for r in rows:
            verb = "unchanged" if r["skipped"] else "registered"
            console.print(f"{verb} [bold]{r['name']}@{r['version']}[/] ({r['role']}) {r['digest'][:23]}...")

    emit(data, output, render)


@app.command()
def sign(
    directory: Annotated[Path, typer.Argument(help="the module directory (holding module.yaml)")],
    key: Annotated[Path, typer.Option("--key", help="PEM elliptic-curve private key")],
) -> None:
    """Sign every file of a module directory (OpenSSF model signing, offline): writes DIR/module.sig."""
    b = bundles.load(directory)
    path = signing.sign(directory, key)
    console.print(f"signed [bold]{b.manifest.name}[/] ({len(b.files)} file(s)) → {path}")


@app.command()
def adopt(
    ctx: typer.Context,
    source: Annotated[
        str, typer.Argument(help="models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN/PATH or a model folder")
    ],
    name: Annotated[str, typer.Option("--name", help="the module's name in modship")],
    role: Annotated[str, typer.Option("--role", help="encoder, adapter, head, evaluator, guard or transform")] = "head",
    overlay: Annotated[
        Path | None, typer.Option("--overlay", help="a partial module.yaml: meaning (labels, space, ranges), metadata")
    ] = None,
    labels: Annotated[str | None, typer.Option(help="comma-separated label set of the only output port")] = None,
    space: Annotated[str | None, typer.Option(help="embedding space id of the only output port")] = None,
    license: Annotated[str | None, typer.Option("--license", help="metadata.license")] = None,
    owner: Annotated[list[str] | None, typer.Option("--owner", help="metadata.owners (repeat)")] = None,
    stability: Annotated[str | None, typer.Option(help="stable or experimental")] = None,
    tracking_uri: Annotated[
        str | None, typer.Option("--from", help="MLflow tracking URI the model is in (default: the registry's)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="write the module directory here instead of registering")
    ] = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Adopt an MLflow model (any flavour that loads as pyfunc) as a module version: contract from its
    signature plus your overlay, requirements from requirements.txt, golden examples from its input
    example; loaded and checked before anything is registered."""
    c = _ctx(ctx)
    doc = adopt_case.read_overlay(overlay)
    flags = {"license": license, "owners": owner, "stability": stability}
    metadata = dict(doc.get("metadata") or {})
    metadata.update({k: v for k, v in flags.items() if v})
    doc["metadata"] = metadata
    if labels is not None or space is not None:
        doc["contract"] = _only_output(doc.get("contract") or {}, labels=labels, space=space)
    models = factory.model_source(tracking_uri or c.settings.registry_uri)
    done = adopt_case.adopt(lambda: c.registry, models, source, name=name, role=role, overlay=doc, out=out)
    if done is None:
        console.print(f"wrote the module directory {out} (register it with `modship module register {out}`)")
        return
    data = dict(_summary(done.version), skipped=False)
    emit(
        data, output, lambda r: console.print(f"adopted {source} as [bold]{r['name']}@{r['version']}[/] ({r['role']})")
    )


def _only_output(contract: dict[str, Any], *, labels: str | None, space: str | None) -> dict[str, Any]:
    """--labels / --space apply to the only output port; the port name is known after derivation."""
    outputs = dict(contract.get("outputs") or {})
    meaning: dict[str, Any] = {}
    if labels is not None:
        meaning["labels"] = [x.strip() for x in labels.split(",") if x.strip()]
    if space is not None:
        meaning["space"] = space
    outputs["*"] = {**outputs.get("*", {}), **meaning}
    return {**contract, "outputs": outputs}


@app.command("list")
def list_(ctx: typer.Context, output: OutputOpt = Format.TABLE) -> None:
    """List modules and their versions."""
    reg = _ctx(ctx).registry
    data = [_summary(v) for name in reg.modules() for v in reg.versions(name)]

    def render(rows: list[dict[str, Any]]) -> None:
        t = Table("module", "version", "role", "aliases", "stability", "deprecation", "digest", box=None)
        for r in rows:
            t.add_row(
                r["name"],
                str(r["version"]),
                r["role"],
                ",".join(r["aliases"]),
                r["stability"],
                r["deprecation"] or "",
                r["digest"][:19],
            )
        console.print(t)

    emit(data, output, render)


@app.command()
def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@ALIAS")],
    output: OutputOpt = Format.TABLE,
) -> None:
    """Show one version: contract, metadata, digests."""
    mv = _ctx(ctx).registry.resolve(refs.parse(ref, field="ref"))
    emit(mv.to_json(), output, lambda d: _render_show(mv))


@app.command()
def alias(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME@VERSION to point the alias at (NAME with --delete)")],
    name: Annotated[str, typer.Argument(help="the alias, e.g. stable")],
    delete: Annotated[bool, typer.Option("--delete", help="remove the alias")] = False,
) -> None:
    """Point an alias (e.g. @stable) at a version, or remove it."""
    reg = _ctx(ctx).registry
    r = refs.parse(ref, field="ref")
    refs.check_alias(name)
    if delete:
        reg.delete_alias(r.name, name)
        console.print(f"removed {r.name}@{name}")
        return
    if r.version is None:
        mv = reg.resolve(r)
        r = refs.ModuleRef(r.name, version=mv.version)
    assert r.version is not None
    reg.set_alias(r.name, name, r.version)
    console.print(f"{r.name}@{name} -> {r.name}@{r.version}")


@app.command()
def deprecate(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME@VERSION")],
    after: Annotated[str | None, typer.Option(help="YYYY-MM-DD: refuse deployments after this date")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="remove the deprecation")] = False,
) -> None:
    """Mark a version deprecated after a date (systems using it then fail validation)."""
    if (after is None) == (not clear):
        raise SpecError("give either --after YYYY-MM-DD or --clear", field="--after")
    date = None
    if after is not None:
        try:
            date = dt.date.fromisoformat(after)
        except ValueError:
            raise SpecError(f"{after!r} is not a date (YYYY-MM-DD)", field="--after") from None
    mv = modules.deprecate(_ctx(ctx).registry, ref, date)
    console.print(f"{mv.ref} deprecated after {mv.deprecation}" if date else f"{mv.ref}: deprecation cleared")


@app.command()
def verify(ctx: typer.Context, ref: Annotated[str, typer.Argument(help="NAME@VERSION")]) -> None:
    """Download the stored artifact and recompute every digest (exit 4 on a mismatch, naming the file);
    check its signature against the signing policy (exit 2 when bad, or missing where required)."""
    mv, key = modules.verify(_ctx(ctx).registry, ref, policy=_ctx(ctx).signing)
    signed = f"; signature verified with {key}" if key else ""
    console.print(f"[green]ok[/] {mv.ref}: {len(mv.files)} file(s) match {mv.digest}{signed}")


@app.command()
def compat(
    ctx: typer.Context,
    producer: Annotated[str, typer.Argument(help="module A (all versions) or A@VERSION")],
    consumer: Annotated[str, typer.Argument(help="module B (all versions) or B@VERSION")],
    output: OutputOpt = Format.TABLE,
) -> None:
    """The matrix of A's versions against B's: does A's output satisfy B's input (types and meaning)?"""
    cells = modules.compat_matrix(_ctx(ctx).registry, producer, consumer)
    data = {"producer": producer, "consumer": consumer, "cells": [c.to_json() for c in cells]}

    def render(_: Any) -> None:
        cols = sorted({c.consumer for c in cells}, key=_vkey)
        rows = sorted({c.producer for c in cells}, key=_vkey)
        t = Table(f"{producer} → {consumer}", *cols, show_lines=True)
        by = {(c.producer, c.consumer): c for c in cells}
        for r in rows:
            t.add_row(r, *[_cell(by[(r, c)]) for c in cols])
        console.print(t)

    emit(data, output, render)
    if cells and not any(c.compatible for c in cells):
        raise typer.Exit(1)


def _vkey(ref: str) -> tuple[str, int]:
    name, _, v = ref.partition("@")
    return name, int(v) if v.isdigit() else 0


def _cell(cell: Any) -> str:
    if cell.compatible:
        return "[green]✓ compatible[/]"
    return "[red]✗[/] " + "\n".join(f"{p.field}: {p.reason}" for p in cell.problems)


def _summary(v: ModuleVersion) -> dict[str, Any]:
    return {
        "name": v.name,
        "version": v.version,
        "role": v.manifest.role.value,
        "aliases": list(v.aliases),
        "stability": v.manifest.metadata.stability.value,
        "deprecation": v.deprecation.isoformat() if v.deprecation else None,
        "digest": v.digest,
    }


def _render_show(mv: ModuleVersion) -> None:
    m = mv.manifest
    md = m.metadata
    t = Table(box=None, show_header=False)
    t.add_column(style="bold")
    t.add_column()
    rows = [
        ("module", mv.ref),
        ("role", m.role.value),
        ("aliases", ", ".join(mv.aliases) or "-"),
        ("description", md.description or "-"),
        ("runtime", m.runtime.kind + (f" ({m.runtime.entrypoint})" if m.runtime.entrypoint else "")),
        ("requirements", ", ".join(m.runtime.requirements) or "-"),
        ("digest", mv.digest),
        ("source", mv.source),
        ("created", mv.created.isoformat(timespec="seconds") if mv.created else "-"),
        ("license", md.license),
        ("stability", md.stability.value),
        ("owners", ", ".join(md.owners)),
        ("deprecation", mv.deprecation.isoformat() if mv.deprecation else "-"),
        ("provenance", ", ".join(f"{k}={v}" for k, v in md.provenance.dump().items()) or "-"),
        ("calibration", ", ".join(f"{k}={v}" for k, v in md.calibration.dump().items()) or "-"),
        ("input statistics", md.input_statistics or "-"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    ports = Table("port", "dtype", "shape", "space", "tokenizer", "labels", "range", title="contract")
    for side, pm in (("in", m.contract.inputs), ("out", m.contract.outputs)):
        for name, p in pm.items():
            ports.add_row(
                f"{side}:{name}",
                p.dtype,
                str(list(p.shape)),
                p.space or "",
                (p.tokenizer or "")[:19],
                ",".join(p.labels) if p.labels else "",
                str(list(p.range)) if p.range else "",
            )
    console.print(ports)
    files = Table("file", "sha256", title="files")
    for rel, digest in sorted(mv.files.items()):
        files.add_row(rel, digest)
    console.print(files)
