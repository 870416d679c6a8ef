"""The ``modship`` CLI: typer + rich, ``-o json`` for programs, exit codes CI can use.

Exit codes: 0 ok; 1 a negative answer (incompatible, rolled back); 2 bad input (SpecError);
3 not found; 4 integrity error; 5 conflict; 6 backend unavailable; 8 denied (no valid token);
9 forbidden by the governance policy; 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from controller import settings
from controller.entrypoints import (
    cli_dashboard,
    cli_gitops,
    cli_governance,
    cli_image,
    cli_module,
    cli_notify,
    cli_rollout,
    cli_system,
    cli_up,
)
from controller.entrypoints.context import Context
from controller.entrypoints.output import fail
from controller.errors import ModshipError

app = typer.Typer(
    name="modship",
    help="Ship ML systems assembled from pretrained modules, safely.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(cli_module.app, name="module")
app.add_typer(cli_system.app, name="system")
app.add_typer(cli_notify.app, name="notify")
app.add_typer(cli_image.app, name="image")
cli_up.register(app)
cli_rollout.register(app)
cli_governance.register(app)
app.command(help="Write the manifests Argo CD or Flux sync for a system (plain YAML + kustomization.yaml).")(
    cli_gitops.render
)
app.command()(cli_dashboard.dashboard)


@app.callback()
def root(
    ctx: typer.Context,
    registry: Annotated[
        str | None,
        typer.Option(envvar="MODSHIP_REGISTRY", help="MLflow tracking URI (default: embedded SQLite)"),
    ] = None,
    home: Annotated[str | None, typer.Option(envvar="MODSHIP_HOME", help="data directory (default ~/.modship)")] = None,
) -> None:
    ctx.obj = Context(settings.load(registry=registry, home=home))


@app.command()
def version() -> None:
    """Print modship's version."""
    from controller import __version__

    typer.echo(__version__)


def main() -> None:
    try:
        rc = app(standalone_mode=False)  # returns the code of a typer.Exit in this mode
    except ModshipError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        fail("aborted", 130)
    except Exception as exc:  # click usage errors and the unexpected
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            raise SystemExit(2) from None
        if os.environ.get("MODSHIP_DEBUG"):
            raise
        fail(f"internal error: {type(exc).__name__}: {exc} (set MODSHIP_DEBUG=1 for a traceback)", 70)
    sys.exit(rc if isinstance(rc, int) else 0)
