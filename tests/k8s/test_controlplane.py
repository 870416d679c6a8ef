"""Smoke tests of the real control plane built from the Go module proxy (tools/k8s/build.sh)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

DEADLINE = 60.0


def poll(what: str, fn: Callable[[], Any], timeout: float = DEADLINE, interval: float = 0.2) -> Any:
    """Return fn()'s first truthy result; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def api(control_plane: Any) -> Iterator[client.ApiClient]:
    with config.new_client_from_config(config_file=str(control_plane.kubeconfig)) as api_client:
        yield api_client


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def test_apiserver_ready_and_pinned_version(control_plane: Any, api: client.ApiClient) -> None:
    info = client.VersionApi(api).get_code()
    assert info.git_version == control_plane.version
    assert (info.major, info.minor) == tuple(control_plane.version.lstrip("v").split(".")[:2])
    assert control_plane.kubectl("get", "--raw=/readyz").stdout.strip() == "ok"
    nodes = client.CoreV1Api(api).list_node().items
    assert [n.metadata.name for n in nodes] == [control_plane.node_name]


def test_deployment_becomes_available(api: client.ApiClient, namespace: str) -> None:
    labels = {"app": "smoke"}
    container = client.V1Container(name="app", image="registry.k8s.io/pause:3.10")
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="smoke"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels), spec=client.V1PodSpec(containers=[container])
            ),
        ),
    )
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(namespace, deployment)

    def available() -> bool:
        status = apps.read_namespaced_deployment_status("smoke", namespace).status
        return status.available_replicas == 2

    poll("Deployment smoke availableReplicas == 2", available)
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector="app=smoke").items
    assert len(pods) == 2
    assert all(p.status.phase == "Running" and p.status.pod_ip for p in pods)


def _crd_names(paths: list[Path]) -> list[str]:
    names = []
    for path in paths:
        for line in path.read_text().splitlines():
            # Every CRD document carries `metadata.name: <plural>.<group>` at indentation 2.
            if line.startswith("  name: ") and "." in line:
                names.append(line.split(":", 1)[1].strip())
    return names


@pytest.mark.parametrize(
    ("subdir", "minimum", "sample"),
    [
        ("gateway-api", 5, "httproutes.gateway.networking.k8s.io"),
        ("istio", 15, "virtualservices.networking.istio.io"),
    ],
)
def test_crds_install_and_become_established(
    control_plane: Any, api: client.ApiClient, subdir: str, minimum: int, sample: str
) -> None:
    files = sorted((control_plane.crd_dir / subdir).glob("*.yaml"))
    assert files, f"no CRDs in {control_plane.crd_dir / subdir}"
    # Server-side apply: some of these CRDs exceed the last-applied annotation limit.
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", *(f"-f={f}" for f in files))
    names = _crd_names(files)
    assert len(names) >= minimum and sample in names
    ext = client.ApiextensionsV1Api(api)

    def established() -> list[str]:
        pending = []
        for name in names:
            conds = ext.read_custom_resource_definition(name).status.conditions or []
            if not any(c.type == "Established" and c.status == "True" for c in conds):
                pending.append(name)
        return [] if pending else names

    poll(f"{subdir} CRDs Established", established)


def test_istio_virtualservice_is_served_and_validated(control_plane: Any, namespace: str) -> None:
    control_plane.kubectl(
        "apply",
        "--server-side",
        f"-f={control_plane.crd_dir / 'istio' / 'customresourcedefinitions.gen.yaml'}",
    )
    control_plane.kubectl("wait", "--for=condition=Established", "crd/virtualservices.networking.istio.io")
    vs: dict[str, Any] = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "vs", "namespace": namespace},
        "spec": {"hosts": ["svc"], "http": [{"route": [{"destination": {"host": "svc"}, "weight": 100}]}]},
    }
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(vs))
    bad = {**vs, "metadata": {"name": "bad", "namespace": namespace}, "spec": {"hosts": "not-a-list"}}
    res = control_plane.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert res.returncode != 0 and "invalid" in res.stderr.lower(), res.stderr


def test_non_admin_user_cannot_list_secrets(control_plane: Any) -> None:
    with (
        config.new_client_from_config(config_file=str(control_plane.user_kubeconfig)) as user_api,
        pytest.raises(ApiException) as err,
    ):
        client.CoreV1Api(user_api).list_namespaced_secret("default")
    assert err.value.status == 403
    assert control_plane.user in json.loads(err.value.body)["message"]
    res = control_plane.kubectl(
        "auth",
        "can-i",
        "list",
        "secrets",
        "-n",
        "default",
        kubeconfig=control_plane.user_kubeconfig,
        check=False,
    )
    assert res.stdout.strip() == "no"


def test_helm_version_and_kube_version(control_plane: Any, tmp_path: Path) -> None:
    out = control_plane.helm("version", "--short").stdout
    assert out.startswith(control_plane.versions["HELM"]), out
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\n"
        "data:\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    )
    # Offline rendering uses the compiled-in default, which build.sh sets to the pinned minor.
    rendered = control_plane.helm("template", "probe", str(chart)).stdout
    major, minor = control_plane.version.lstrip("v").split(".")[:2]
    assert f'kube: "v{major}.{minor}.0"' in rendered
