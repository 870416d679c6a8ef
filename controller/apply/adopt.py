"""Adopt a model already in MLflow as a module version.

    adopt(registry, "models:/wine-classifier/3", name="wine-head", role="head", overlay={...})

The model is downloaded into a new module directory (``model/``), its contract derived from the
MLflow signature and completed by the user's overlay (meaning: space, labels, ranges; metadata:
license, owners, stability), its requirements read from ``requirements.txt``, and golden examples
made from its saved input example. Then it is registered like any module directory: loaded, its
golden examples run, all or nothing. Nothing is registered when any of this fails.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from controller import ports
from controller.apply import modules
from controller.errors import SpecError
from controller.pipeline import kernels, runtimes, values
from controller.registry import bundle as bundles
from controller.registry import signatures
from controller.spec import parse
from controller.spec.modules import ModuleManifest

MODEL_DIR = "model"
GOLDEN = "golden.json"


def adopt(
    registry: ports.Registry | Callable[[], ports.Registry],
    models: ports.ModelSource,
    source: str,
    *,
    name: str,
    role: str,
    overlay: dict[str, Any] | None = None,
    out: Path | None = None,
) -> modules.Registered | None:
    """Make ``source`` a module version (or, with ``out``, only write the module directory)."""
    try:
        return _adopt(registry, models, source, name=name, role=role, overlay=overlay, out=out)
    except SpecError as exc:  # name what the user gave, not the staging directory
        raise SpecError(exc.reason, field=exc.field, source=f"adopting {source}") from None


def _adopt(
    registry: ports.Registry | Callable[[], ports.Registry],
    models: ports.ModelSource,
    source: str,
    *,
    name: str,
    role: str,
    overlay: dict[str, Any] | None,
    out: Path | None,
) -> modules.Registered | None:
    with tempfile.TemporaryDirectory(prefix="modship-adopt-") as tmp:
        root = Path(tmp) / "module"
        root.mkdir()
        info = models.download(source, root / MODEL_DIR)
        doc, tolerance = _manifest(info, source=source, name=name, role=role, overlay=overlay or {})
        (root / bundles.MANIFEST).write_text(yaml.safe_dump(doc, sort_keys=False))
        if _write_golden(root, info):
            doc["golden"] = {"file": GOLDEN, "tolerance": tolerance}
            (root / bundles.MANIFEST).write_text(yaml.safe_dump(doc, sort_keys=False))
        if out is not None:
            if out.exists():
                raise SpecError(f"{out} exists: choose a new directory", field="--out")
            bundles.load(root)  # the same checks as register, then keep the directory for editing
            shutil.copytree(root, out)
            return None
        return modules.register(registry, [root])[0]


def _manifest(
    info: ports.ModelInfo, *, source: str, name: str, role: str, overlay: dict[str, Any]
) -> tuple[dict[str, Any], float]:
    """The module manifest (wire form) and the golden tolerance to use."""
    if info.signature is None and "contract" not in overlay:
        raise SpecError(
            "the model has no signature: declare contract.inputs and contract.outputs in the overlay",
            field="contract",
        )
    extra = dict(overlay)
    contract_overlay = extra.pop("contract", None) or {}
    if info.signature is not None:
        contract = signatures.overlay(runtimes.derive_contract(info.signature), contract_overlay)
    else:
        contract = contract_overlay
    metadata = dict(extra.pop("metadata", None) or {})
    provenance = dict(metadata.pop("provenance", None) or {})
    provenance.setdefault("origin", source)
    if info.run_id:
        provenance.setdefault("sourceRun", info.run_id)
    metadata["provenance"] = provenance
    metadata.setdefault("description", f"adopted from {source} ({', '.join(info.flavors)})")
    runtime = {"kind": "mlflow", "files": {"model": MODEL_DIR}, **(extra.pop("runtime", None) or {})}
    golden = extra.pop("golden", None) or {}
    doc: dict[str, Any] = {
        "apiVersion": "modship.dev/v1alpha1",
        "kind": "Module",
        "name": name,
        "role": extra.pop("role", role),
        "runtime": runtime,
        "contract": contract,
        "metadata": metadata,
    }
    if extra:
        raise SpecError(f"unknown overlay field {sorted(extra)[0]!r}", field="overlay")
    parse.to_model(ModuleManifest, doc, source="adopted module")  # one clear line for a bad overlay
    return doc, float(golden.get("tolerance", 1e-6))


def _write_golden(root: Path, info: ports.ModelInfo) -> bool:
    """Golden examples from the model's saved input example: what it answers now is what it must
    keep answering wherever this version is loaded. False when the model saved no example."""
    if info.example is None:
        return False
    manifest = bundles.load(root).manifest
    if len(manifest.contract.inputs) != 1:
        raise SpecError("the input example fits no single input port: give golden examples yourself", field="golden")
    port, spec = next(iter(manifest.contract.inputs.items()))
    try:
        batch = {port: values.decode(port, spec, info.example)}
    except ValueError as exc:
        raise SpecError(f"the model's input example does not fit its contract: {exc}", field="golden") from None
    got = kernels.load(root, manifest, faults=False)(batch)
    doc = {
        "inputs": {port: values.encode(batch[port])},
        "outputs": {p: values.encode(v, digits=None) for p, v in got.items()},
    }
    (root / GOLDEN).write_text(json.dumps(doc))
    return True


def read_overlay(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    docs = parse.load_documents(path)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise SpecError("expected one mapping (a partial module.yaml)", source=str(path))
    return dict(docs[0])
