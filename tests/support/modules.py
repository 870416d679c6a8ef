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


def port(dtype: str = "float32", shape: list[int] | None = None, **meaning: Any) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape or [-1], **meaning}


def manifest(
    name: str,
    role: str,
    inputs: dict[str, Any],
    outputs: dict[str, Any],
    *,
    kind: str = "linear",
    stability: str = "stable",
    deprecation: str | None = None,
) -> dict[str, Any]:
    md: dict[str, Any] = {"license": "MIT", "owners": ["t@example.com"], "stability": stability}
    if deprecation:
        md["deprecation"] = deprecation
    return {
        "apiVersion": "modship.dev/v1alpha1",
        "kind": "Module",
        "name": name,
        "role": role,
        "runtime": {"kind": kind},
        "contract": {"inputs": inputs, "outputs": outputs},
        "metadata": md,
    }


L6, L3 = "all-minilm-l6-v2", "paraphrase-minilm-l3-v2"


def emb(space: str) -> dict[str, Any]:
    return port("float32", [-1, 4], space=space)


def probs() -> dict[str, Any]:
    return port("float32", [-1, 5], labels=LABELS, range=[0, 1])


def catalog() -> dict[str, dict[str, Any]]:
    """Manifests of a small module family: two encoders in different spaces, an adapter, heads."""
    text = {"text": port("string")}
    return {
        "guard@1": manifest("guard", "guard", text, text, kind="text-guard"),
        "enc@1": manifest("enc", "encoder", text, {"embedding": emb(L6)}),
        "enc@2": manifest("enc", "encoder", text, {"embedding": emb(L3)}),
        "align@1": manifest("align", "adapter", {"embedding": emb(L3)}, {"embedding": emb(L6)}),
        "head@1": manifest("head", "head", {"embedding": emb(L6)}, {"probs": probs()}, kind="softmax-linear"),
        "head@2": manifest("head", "head", {"embedding": emb(L6)}, {"probs": probs()}, kind="softmax-linear"),
        "head@3": manifest(
            "head", "head", {"embedding": emb(L6)}, {"probs": probs()}, kind="softmax-linear", stability="experimental"
        ),
        "old@1": manifest("old", "head", {"embedding": emb(L6)}, {"probs": probs()}, deprecation="2020-01-01"),
        "other@1": manifest(
            "other", "head", {"embedding": emb(L6)}, {"probs": port("float32", [-1, 3], labels=["a", "b", "c"])}
        ),
        "conf@1": manifest(
            "conf",
            "evaluator",
            {"probs": port("float32", [-1, -1], range=[0, 1])},
            {"score": port("float32"), "passed": port("bool")},
            kind="confidence-evaluator",
        ),
    }


def versions() -> dict[str, Any]:
    """ModuleVersion records for ``catalog()`` (with made-up digests), keyed by ref."""
    import hashlib

    from controller.registry.versions import ModuleVersion
    from controller.spec.modules import ModuleManifest

    out = {}
    for ref, m in catalog().items():
        name, v = ref.split("@")
        mm = ModuleManifest.model_validate(m)
        out[ref] = ModuleVersion(
            name=name,
            version=int(v),
            manifest=mm,
            digest="sha256:" + hashlib.sha256(ref.encode()).hexdigest(),
            files={"module.yaml": "0" * 64},
            source=f"memory://{ref}",
            deprecation=mm.metadata.deprecation,
        )
    return out


def system_doc(steps: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modship.dev/v1alpha1",
        "kind": "System",
        "metadata": {"name": "sys"},
        "spec": {"steps": steps, **spec},
    }


STANDARD_STEPS: list[dict[str, Any]] = [
    {"name": "guard", "module": "guard@1", "inputs": {"text": "input.text"}},
    {"name": "encoder", "module": "enc@1", "inputs": {"text": "guard.text"}},
    {"name": "head", "module": "head@1", "inputs": {"embedding": "encoder.embedding"}},
    {"name": "evaluator", "module": "conf@1", "inputs": {"probs": "head.probs"}},
]
