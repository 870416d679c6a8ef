"""Pure helpers of the kind fixture (tests/support/kindenv.py): its cluster config and Corefile edit."""

from __future__ import annotations

import yaml

from tests.support.kindenv import cluster_config, strip_forward


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
