"""``modship render``: the manifests Argo CD or Flux sync for a system (see ``apply.gitops``).

``promote --gitops`` and ``status --gitops`` live with the other rollout commands (``cli_rollout``) and
call the same use cases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from controller.apply import gitops
from controller.compose.manifests import Traffic, TrafficOptions
from controller.entrypoints.output import Format, console, emit
from controller.errors import SpecError
from controller.spec.objects import DNS_LABEL

__all__ = ["Traffic", "render"]


def _check_name(value: str | None, field: str) -> None:
    if value is not None and not DNS_LABEL.match(value):
        raise SpecError(f"{value!r} is not a Kubernetes name (lowercase letters, digits, '-')", field=field)


def render(
    ctx: typer.Context,
    target: Annotated[Path, typer.Argument(help="a System spec, a SystemLock or a Rollout spec (YAML)")],
    out: Annotated[Path, typer.Option("--out", help="directory to write (one file per object + kustomization.yaml)")],
    namespace: Annotated[str | None, typer.Option(help="namespace of every object (default: none, the app's)")] = None,
    image: Annotated[
        str | None, typer.Option(help="image repository of the revisions, or a template holding {revision}")
    ] = None,
    rollout: Annotated[
        Path | None, typer.Option(help="with a System target: its Rollout spec (default: a stepped canary)")
    ] = None,
    system: Annotated[
        Path | None, typer.Option(help="with a Rollout target: the System spec or lock, kept in a ConfigMap")
    ] = None,
    traffic: Annotated[Traffic, typer.Option(help="route with: the Rollout's trafficRouting + a skeleton object")] = (
        Traffic.NONE
    ),
    http_route: Annotated[
        str | None, typer.Option(help="gateway-api: the HTTPRoute name (default: the system)")
    ] = None,
    virtual_service: Annotated[str | None, typer.Option(help="istio: the VirtualService name")] = None,
    ingress: Annotated[str | None, typer.Option(help="nginx: the stable Ingress name")] = None,
    gateway: Annotated[str | None, typer.Option(help="gateway-api: parent Gateway, NAME or NAMESPACE/NAME")] = None,
    host: Annotated[str | None, typer.Option(help="the hostname clients use")] = None,
    ingress_class: Annotated[str, typer.Option(help="nginx: the IngressClass")] = "nginx",
    output: Annotated[Format, typer.Option("--output", "-o", help="table or json")] = Format.TABLE,
) -> None:
    """Render the manifests Argo CD or Flux sync for a system: the Rollout CR, a ConfigMap with the
    System spec, an optional traffic skeleton, and a kustomization.yaml listing them."""
    _check_name(namespace, "--namespace")
    flags = {
        Traffic.GATEWAY_API: ("--http-route", http_route),
        Traffic.ISTIO: ("--virtual-service", virtual_service),
        Traffic.NGINX: ("--ingress", ingress),
    }
    for kind, (flag, value) in flags.items():
        if value is not None and traffic is not kind:
            raise SpecError(f"{flag} needs --traffic {kind}", field=flag)
        if traffic is kind:
            _check_name(value, flag)
    route = flags[traffic][1] if traffic in flags else None
    if gateway is not None and traffic is not Traffic.GATEWAY_API:
        raise SpecError("--gateway needs --traffic gateway-api", field="--gateway")
    options = TrafficOptions(kind=traffic, route=route, gateway=gateway, host=host, ingress_class=ingress_class)
    name, paths, gaps = gitops.render(
        out, target, rollout=rollout, system=system, namespace=namespace, image=image, traffic=options
    )

    def show(d: dict[str, Any]) -> None:
        console.print(f"rendered {len(paths)} file(s) for [bold]{d['system']}[/] into {out}")
        for g in gaps:
            console.print(f"[yellow]warning[/] {g.field}: {g.message}", highlight=False, soft_wrap=True)

    emit({"system": name, "files": [str(p) for p in paths], "warnings": [g.to_json() for g in gaps]}, output, show)
