"""Session-wide real Kubernetes control plane (see tests/support/k8senv.py, tools/k8s/build.sh)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest

from tests.support.k8senv import ControlPlane


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + controller-manager + scheduler + kwok fake node, shared by the session.

    Raises (the tests error) with a hint to run `bash tools/k8s/build.sh` if the binaries are missing.
    """
    t0 = time.monotonic()
    with ControlPlane() as cp:
        sys.stderr.write(f"\n[k8s] control plane {cp.version} at {cp.server} up in {time.monotonic() - t0:.1f}s\n")
        yield cp
