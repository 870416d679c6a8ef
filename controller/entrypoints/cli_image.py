"""``modship image build``: a revision as a container image, from a runtime image built once
(``adapters.images``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from controller.adapters import bento, images
from controller.entrypoints.cli_system import TodayOpt, _today, prepare
from controller.entrypoints.context import Context
from controller.entrypoints.output import Format, console, emit
from controller.errors import SpecError
from controller.spec.rollout import Workload

app = typer.Typer(
    help="Container images of revisions, built here with docker (no registry needed).", no_args_is_help=True
)


@app.command("build")
def build(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="a System spec or its lock file")],
    image: Annotated[
        str | None,
        typer.Option(
            help="repository, or a template holding {revision} (as in the Rollout's spec.workload.image); "
            "default modship.local/<system>"
        ),
    ] = None,
    base: Annotated[
        str,
        typer.Option(
            help="Python 3.11 base of the runtime image (python:3.11-slim-bookworm where a registry is reachable)"
        ),
    ] = images.DEFAULT_BASE,
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="the port it serves on (the Rollout's spec.workload.port)")
    ] = 3000,
    today: TodayOpt = None,
    output: Annotated[Format, typer.Option("--output", "-o", help="table or json")] = Format.TABLE,
) -> None:
    """Build the revision's Bento if needed (validate, lock, contract tests), then the image
    REPOSITORY:<revision>: non-root, serving /predict, /readyz and /livez on --port."""
    obj: Context = ctx.obj
    if image is not None:
        images.check_reference(Workload(image=image).image_for("r000000000000"), "--image")
    if not images.REFERENCE.match(base if ":" in base.rsplit("/", 1)[-1] else f"{base}:latest"):
        raise SpecError(f"{base!r} is not an image reference", field="--base")
    docker = images.Docker()
    docker.ping()
    images.require_base(docker, base)  # before any build: a missing base leaves nothing half-built
    lk, local = prepare(obj, file, today=_today(today))
    ref = images.check_reference(Workload(image=image or f"modship.local/{lk.name}").image_for(lk.revision), "--image")
    tag = bento.build(lk, local, bentoml_home=obj.settings.bentoml_home, policy=obj.signing)
    bento_dir = bento.bento_path(obj.settings.bentoml_home, lk)
    runtime = images.ensure_runtime(docker, base=base, bento_dir=bento_dir, cache=images.default_cache())
    built = images.build_revision(
        docker, bento_dir=bento_dir, system=lk.name, revision=lk.revision, image=ref, runtime=runtime, port=port
    )
    data = {
        "system": lk.name,
        "revision": lk.revision,
        "bento": tag,
        "image": built.image,
        "runtime": built.runtime,
        "port": port,
        "size": built.size,
    }

    def show(_: Any) -> None:
        console.print(
            f"built image [bold]{built.image}[/] ({built.size / 1e6:.0f} MB, from {built.runtime}); "
            f"serves on port {port}"
        )

    emit(data, output, show)
