"""MLflow models a team already has: download one (``models:/``, ``runs:/``, any artifact URI or a
local model folder) and read what it says about itself (signature, input example, requirements).

Library errors are translated here, like in ``mlflow_registry``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from controller.adapters.mlflow_registry import _translating
from controller.errors import NotFound, SpecError
from controller.ports import ModelInfo


class MlflowModels:
    """The ``ModelSource`` port on MLflow (a tracking server, or the embedded SQLite store)."""

    def __init__(self, tracking_uri: str | None) -> None:
        self.tracking_uri = tracking_uri

    def download(self, uri: str, dest: Path) -> ModelInfo:
        return download(uri, dest, tracking_uri=self.tracking_uri)


def download(uri: str, dest: Path, *, tracking_uri: str | None) -> ModelInfo:
    """Copy the model at ``uri`` into ``dest`` (a new folder) and read its MLmodel."""
    local = Path(uri).expanduser()
    if "://" not in uri and ":/" not in uri:
        if not (local / "MLmodel").is_file():
            raise SpecError(f"{uri} is not an MLflow model folder (no MLmodel file)", field="source")
        shutil.copytree(local, dest)
    else:
        import mlflow.artifacts

        if tracking_uri:
            import mlflow

            # both: resolving ``models:/`` makes a client with the registry URI only, whose tracking
            # store is otherwise MLflow's default, a SQLite file created in the working directory
            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_registry_uri(tracking_uri)
        with _translating(f"downloading {uri}", tracking_uri or "the default tracking URI"):
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri))
        if not (got / "MLmodel").is_file():
            raise NotFound(f"{uri} is not an MLflow model (no MLmodel file)")
        shutil.copytree(got, dest)
    return read(dest)


def read(path: Path) -> ModelInfo:
    from mlflow.models import Model

    try:
        model = Model.load(str(path / "MLmodel"))
    except Exception as exc:
        raise SpecError(f"the MLmodel file does not load: {exc}", field="source") from None
    example = None
    info = model.saved_input_example_info
    if info and (path / info.get("artifact_path", "")).is_file():
        example = _example(json.loads((path / info["artifact_path"]).read_text()))
    return ModelInfo(path, model.signature, example, model.run_id, tuple(sorted(model.flavors)))


def _example(doc: Any) -> Any:
    """The input example in one of MLflow's JSON layouts -> records, a tensor or a dict of tensors."""
    if isinstance(doc, dict) and "columns" in doc and "data" in doc:  # pandas "split" orientation
        return [dict(zip(doc["columns"], row, strict=True)) for row in doc["data"]]
    if isinstance(doc, dict) and "dataframe_split" in doc:
        return _example(doc["dataframe_split"])
    if isinstance(doc, dict) and "inputs" in doc:
        return doc["inputs"]
    if isinstance(doc, dict) and "instances" in doc:
        return doc["instances"]
    return doc
