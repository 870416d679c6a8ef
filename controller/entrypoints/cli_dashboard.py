"""``modship dashboard``: open the web dashboard of the local controller, or serve one for a
Kubernetes context with the user's own kubeconfig credentials (see ``entrypoints.dashboard``)."""

from __future__ import annotations

import hmac
import json
import os
import secrets
import webbrowser
from typing import Annotated

import typer

from controller.entrypoints.context import Context
from controller.entrypoints.output import console
from controller.errors import Unavailable

KubeContextOpt = Annotated[
    str | None,
    typer.Option("--context", help="serve a dashboard for the Rollouts of this kubeconfig context (your credentials)"),
]
NamespaceOpt = Annotated[str | None, typer.Option("--namespace", "-n", help="Kubernetes namespace of the Rollouts")]


def dashboard(
    ctx: typer.Context,
    context: KubeContextOpt = None,
    namespace: NamespaceOpt = None,
    port: Annotated[int, typer.Option(help="with --context: the local port to serve on (0: any free port)")] = 0,
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="open it in the web browser")] = True,
) -> None:
    """Open the web dashboard (the URL carries your token in its #fragment, which is never sent
    to a server). With --context, serve one on 127.0.0.1 for a cluster until Ctrl-C."""
    if context or namespace:
        _serve_kube(context, namespace, port=port, open_browser=open_browser)
        return
    obj: Context = ctx.obj
    path = obj.settings.home / "controller.json"
    if not path.exists():
        raise Unavailable(f"no local controller for {obj.settings.home}: start one with `modship up`")
    info = json.loads(path.read_text())
    token = os.environ.get("MODSHIP_TOKEN") or info.get("token")
    url = f"{info['url']}/dashboard/" + (f"#token={token}" if token else "")
    _show(url, open_browser=open_browser)


def _show(url: str, *, open_browser: bool) -> None:
    console.print(f"dashboard: {url}", soft_wrap=True, highlight=False)
    if open_browser:
        webbrowser.open(url)


def _serve_kube(context: str | None, namespace: str | None, *, port: int, open_browser: bool) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.middleware import Middleware

    from controller.adapters.kube_rollouts import KubeRollouts
    from controller.adapters.local_runtime import free_port
    from controller.apply.kube_control import KubeControl
    from controller.apply.watch import Watch
    from controller.entrypoints import api, guard
    from controller.entrypoints import dashboard as web

    resources = KubeRollouts(context=context, namespace=namespace)
    kc = KubeControl(resources)

    def fingerprint() -> dict[str, str]:
        return {
            x.name: json.dumps([x.status.for_storage(), x.target, x.paused, x.toggles, x.shown], default=str)
            for x in resources.records()
        }

    token = secrets.token_urlsafe(32)
    port = port or free_port()
    you = f"kubeconfig:{context or 'current-context'}"  # the API server decides who acts (KubeControl)

    def user_of(given: str) -> str | None:
        return you if hmac.compare_digest(given.encode(), token.encode()) else None

    routes = [*api.routes(kc), *web.routes(Watch(fingerprint, interval=1.0))]
    guarded = Middleware(guard.Guard, user_of=user_of, origins=guard.own_origins("http", "127.0.0.1", port),
                         public=web.PUBLIC, public_prefixes=("/dashboard/",))  # fmt: skip
    app = Starlette(routes=routes, middleware=[guarded])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2)
    )
    _show(f"http://127.0.0.1:{port}/dashboard/#token={token}", open_browser=open_browser)
    console.print(f"serving namespace {kc.namespace} with your kubeconfig credentials; Ctrl-C to stop")
    server.run()
