"""Pure helpers of the kind fixture (tests/support/kindenv.py): its cluster config and Corefile edit; the
README's kind walk-through (run by tests/kind/test_chart_operator.py) names files that exist."""

from __future__ import annotations

import re

import yaml

from tests.kind.test_chart_operator import walkthrough
from tests.support.k8senv import read_versions
from tests.support.kindenv import REPO_ROOT, cluster_config, strip_forward


def test_cluster_config_publishes_node_ports_on_loopback_only() -> None:
    config = yaml.safe_load(cluster_config("modship-x", {30080: 41000, 30500: 41001}, "3.6.16-0"))
    assert config["networking"]["apiServerAddress"] == "127.0.0.1"
    assert config["networking"]["disableDefaultCNI"] is True
    mappings = config["nodes"][0]["extraPortMappings"]
    assert [(m["containerPort"], m["hostPort"], m["listenAddress"]) for m in mappings] == [
        (30080, 41000, "127.0.0.1"),
        (30500, 41001, "127.0.0.1"),
    ]
    assert yaml.safe_load(config["kubeadmConfigPatches"][0])["etcd"]["local"]["imageTag"] == "3.6.16-0"


def test_strip_forward_removes_only_the_forward_block() -> None:
    corefile = (
        ".:53 {\n    errors\n    kubernetes cluster.local in-addr.arpa ip6.arpa {\n       pods insecure\n    }\n"
        "    forward . /etc/resolv.conf {\n       max_concurrent 1000\n    }\n    cache 30\n}\n"
    )
    assert strip_forward(corefile) == (
        ".:53 {\n    errors\n    kubernetes cluster.local in-addr.arpa ip6.arpa {\n       pods insecure\n    }\n"
        "    cache 30\n}\n"
    )


def test_the_walkthrough_cluster_config_is_kindenvs() -> None:
    """examples/kind/cluster.yaml (the README's) is the config kindenv gives the tests' clusters."""
    etcd = read_versions()["ETCD"].removeprefix("v") + "-0"
    ours = yaml.safe_load(cluster_config("x", {30080: 30080, 30500: 30500}, etcd))
    ours.pop("name")
    assert yaml.safe_load((REPO_ROOT / "examples" / "kind" / "cluster.yaml").read_text()) == ours


def test_the_readme_walkthrough_names_files_that_exist() -> None:
    block = walkthrough()
    assert "kind create cluster" in block and "helm upgrade --install modship charts/modship" in block
    assert "[step]" in block  # numbered comments became timestamps
    for path in sorted(set(re.findall(r"(?:examples|tools|charts)/[\w./-]+", block))):
        assert (REPO_ROOT / path).exists(), path
