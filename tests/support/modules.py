"""Small module directories for tests (a real head kernel with random weights)."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import numpy as np
import yaml

LABELS = ["business", "entertainment", "politics", "sport", "tech"]


def head_manifest(name: str = "topic-head", *, space: str = "all-minilm-l6-v2", dim: int = 384) -> dict[str, Any]:
    return {
        "apiVersion": "modship.dev/v1alpha1",
        "kind": "Module",
        "name": name,
        "role": "head",
        "runtime": {"kind": "softmax-linear", "files": {"weights": "head.npz"}},
        "contract": {
            "inputs": {"embedding": {"dtype": "float32", "shape": [-1, dim], "space": space}},
            "outputs": {"probs": {"dtype": "float32", "shape": [-1, 5], "labels": LABELS, "range": [0, 1]}},
        },
        "metadata": {
            "description": "a test head",
            "provenance": {"trainingData": "synthetic", "parents": ["text-encoder@1"]},
            "inputStatistics": "stats.json",
            "calibration": {"ece": 0.03, "heldOutAccuracy": 0.9},
            "license": "MIT",
            "stability": "stable",
            "owners": ["tests@example.com"],
        },
    }


def write(root: Path, manifest: dict[str, Any] | None = None, *, seed: int = 0, dim: int = 384) -> Path:
    """A complete module directory: module.yaml, head.npz, stats.json."""
    root.mkdir(parents=True, exist_ok=True)
    m = copy.deepcopy(manifest or head_manifest())
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    np.savez(buf, coef=rng.normal(size=(5, dim)).astype(np.float32), intercept=np.zeros(5, np.float32))
    (root / "head.npz").write_bytes(buf.getvalue())
    (root / "stats.json").write_text('{"embedding": {"kind": "vector"}}')
    (root / "module.yaml").write_text(yaml.safe_dump(m, sort_keys=False))
    return root
