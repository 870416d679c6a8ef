"""Bring your own module: real ONNX graphs (onnxruntime), real MLflow models (a scikit-learn pipeline
on a table, logged to a real MLflow server) and python components, through the CLI. Register means
it works: every refusal is one line, exit 2, no traceback, and nothing registered."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.conftest import Cli
from tests.support.services import MlflowServer

pytestmark = pytest.mark.slow
OWNERS = ["team@example.com"]


def onnx_add(path: Path, *, dtype: int | None = None) -> Path:
    """A real ONNX graph: y = x + 1 over [batch, 3] floats."""
    from onnx import TensorProto, helper, numpy_helper

    t = dtype or TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "add-one",
        [helper.make_tensor_value_info("x", t, ["batch", 3])],
        [helper.make_tensor_value_info("y", t, ["batch", 3])],
        [numpy_helper.from_array(np.ones(3, dtype=np.float32 if t == TensorProto.FLOAT else np.float64), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def module_dir(root: Path, manifest: dict[str, Any], files: dict[str, str | bytes] | None = None) -> Path:
    root.mkdir(parents=True)
    for rel, data in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data.encode() if isinstance(data, str) else data)
    (root / "module.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return root


def manifest(name: str, runtime: dict[str, Any], contract: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "modship.dev/v1alpha1",
        "kind": "Module",
        "name": name,
        "role": extra.pop("role", "transform"),
        "runtime": runtime,
        "contract": contract,
        "metadata": {"license": "Apache-2.0", "owners": OWNERS, "stability": "stable"},
        **extra,
    }


VEC3 = {"dtype": "float32", "shape": [-1, 3]}
ADD_CONTRACT = {"inputs": {"x": VEC3}, "outputs": {"y": VEC3}}


def onnx_module(tmp: Path, name: str = "add-one", **changes: Any) -> Path:
    root = tmp / name
    root.mkdir(parents=True)
    onnx_add(root / "add.onnx")
    (root / "golden.json").write_text(json.dumps({"inputs": {"x": [[0, 1, 2]]}, "outputs": {"y": [[1, 2, 3]]}}))
    m = manifest(
        name,
        {"kind": "onnx", "files": {"model": "add.onnx"}},
        ADD_CONTRACT,
        golden={"file": "golden.json", "tolerance": 1e-6},
    )
    for key, value in changes.items():
        m[key] = value
    (root / "module.yaml").write_text(yaml.safe_dump(m, sort_keys=False))
    return root


def refused(cli: Cli, *args: str, says: str) -> None:
    r = cli(*args)
    assert r.code == 2, r.out + r.err
    assert says in r.err and "Traceback" not in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert json.loads(cli.ok("module", "list", "-o", "json").out) == []  # nothing registered


def test_an_onnx_graph_registers_and_runs(embedded_cli: Cli, tmp_path: Path) -> None:
    got = json.loads(embedded_cli.ok("module", "register", str(onnx_module(tmp_path)), "-o", "json").out)
    assert got[0]["name"] == "add-one" and got[0]["version"] == 1


def test_an_onnx_contract_that_contradicts_the_graph_is_refused(embedded_cli: Cli, tmp_path: Path) -> None:
    wrong_dtype = {"inputs": {"x": {"dtype": "float64", "shape": [-1, 3]}}, "outputs": {"y": VEC3}}
    refused(
        embedded_cli,
        "module",
        "register",
        str(onnx_module(tmp_path, "a", contract=wrong_dtype)),
        says="contract.inputs.x: graph input 'x': dtype is float32, the contract says float64",
    )
    wrong_port = {"inputs": {"pixels": VEC3}, "outputs": {"y": VEC3}}
    refused(
        embedded_cli,
        "module",
        "register",
        str(onnx_module(tmp_path, "b", contract=wrong_port)),
        says="the graph has no input 'pixels'",
    )
    wrong_shape = {"inputs": {"x": {"dtype": "float32", "shape": [-1, 4]}}, "outputs": {"y": VEC3}}
    refused(
        embedded_cli,
        "module",
        "register",
        str(onnx_module(tmp_path, "c", contract=wrong_shape)),
        says="dimension 1 is 3, the contract says 4",
    )


def test_an_unknown_runtime_kind_is_refused(embedded_cli: Cli, tmp_path: Path) -> None:
    root = onnx_module(tmp_path, runtime={"kind": "tensorflow-savedmodel", "files": {"model": "add.onnx"}})
    refused(embedded_cli, "module", "register", str(root), says="runtime.kind: unknown runtime kind")


def test_weights_that_do_not_load_are_refused(embedded_cli: Cli, tmp_path: Path) -> None:
    root = onnx_module(tmp_path)
    (root / "add.onnx").write_bytes(b"\x08\x07garbage" * 40)
    refused(embedded_cli, "module", "register", str(root), says="runtime.files.model: the ONNX graph does not load")
    builtin = tmp_path / "head"
    module_dir(
        builtin,
        manifest(
            "head",
            {"kind": "softmax-linear", "files": {"weights": "head.npz"}},
            {"inputs": {"e": VEC3}, "outputs": {"p": {"dtype": "float32", "shape": [-1, 2]}}},
            role="head",
        ),
        {"head.npz": b"PK\x03\x04 not really a zip"},
    )
    refused(embedded_cli, "module", "register", str(builtin), says="the module does not load")


def test_a_wrong_golden_file_is_refused(embedded_cli: Cli, tmp_path: Path) -> None:
    root = onnx_module(tmp_path)
    (root / "golden.json").write_text(json.dumps({"inputs": {"x": [[0, 1, 2]]}, "outputs": {"y": [[1, 2, 4]]}}))
    refused(embedded_cli, "module", "register", str(root), says="golden output 'y' differs by 1")


COMPONENT = """
import numpy as np
from .helpers import SCALE


class Doubler:
    def __init__(self, root, params):
        self.factor = params.get("factor", SCALE)

    def __call__(self, batch):
        return {"y": np.asarray(batch["x"]) * self.factor}
"""


def component_module(tmp: Path, name: str = "doubler", **runtime: Any) -> Path:
    rt = {"kind": "python", "entrypoint": "component.py:Doubler", "params": {"factor": 2.0}, **runtime}
    return module_dir(
        tmp / name,
        manifest(name, rt, ADD_CONTRACT, golden={"file": "golden.json"}),
        {
            "component.py": COMPONENT,
            "helpers.py": "SCALE = 2.0\n",
            "golden.json": json.dumps({"inputs": {"x": [[1, 2, 3]]}, "outputs": {"y": [[2, 4, 6]]}}),
        },
    )


def test_a_python_component_loads_from_its_directory_only(embedded_cli: Cli, tmp_path: Path) -> None:
    embedded_cli.ok("module", "register", str(component_module(tmp_path)))
    (tmp_path / "evil.py").write_text("class Doubler: pass\n")
    outside = component_module(tmp_path, "outside", entrypoint="../evil.py:Doubler")
    r = embedded_cli("module", "register", str(outside))
    assert r.code == 2 and "points outside the module directory" in r.err, r.err
    missing = component_module(tmp_path, "missing", entrypoint="component.py:Tripler")
    r = embedded_cli("module", "register", str(missing))
    assert r.code == 2 and "component.py has no class 'Tripler'" in r.err, r.err


def test_requirement_conflicts_are_reported_and_the_bento_lists_the_union(embedded_cli: Cli, tmp_path: Path) -> None:
    embedded_cli.ok(
        "module", "register",
        str(component_module(tmp_path, "first", requirements=["numpy==1.26.4", "pillow>=10"])),
        str(component_module(tmp_path, "second", requirements=["numpy==2.4.6"])),
        str(component_module(tmp_path, "third", requirements=["numpy>=1.20", "pillow>=10"])),
    )  # fmt: skip
    system = {
        "apiVersion": "modship.dev/v1alpha1",
        "kind": "System",
        "metadata": {"name": "twice"},
        "spec": {
            "input": {"x": VEC3},
            "steps": [
                {"name": "a", "module": "first@1", "inputs": {"x": "input.x"}},
                {"name": "b", "module": "second@1", "inputs": {"x": "a.y"}},
            ],
        },
    }
    path = tmp_path / "system.yaml"
    path.write_text(yaml.safe_dump(system))
    r = embedded_cli("system", "validate", str(path), "-o", "json")
    assert r.code == 2
    v = [x for x in json.loads(r.out)["violations"] if x["kind"] == "requirements"]
    assert len(v) == 1 and "first@1" in v[0]["reason"] and "second@1" in v[0]["reason"] and "numpy" in v[0]["reason"]
    system["spec"]["steps"][1]["module"] = "third@1"  # type: ignore[index]
    path.write_text(yaml.safe_dump(system))
    built = json.loads(embedded_cli.ok("system", "build", str(path), "-o", "json").out)
    bento = embedded_cli.home / "bentoml" / "bentos" / "twice" / built["revision"]
    reqs = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "numpy==1.26.4" in reqs and "numpy>=1.20" in reqs and reqs.count("pillow") == 1


WINE_OVERLAY = {
    "contract": {"outputs": {"output": {"labels": ["class_0", "class_1", "class_2"], "range": [0, 1]}}},
    "metadata": {"license": "BSD-3-Clause", "owners": OWNERS, "stability": "stable"},
}


@pytest.fixture(scope="module")
def wine_model(mlflow_server: MlflowServer) -> str:
    """A scikit-learn pipeline on a DataFrame, logged and registered by the user, as people do."""
    import mlflow
    import mlflow.sklearn
    import sklearn
    import skops
    from mlflow.models import infer_signature
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_wine(return_X_y=True, as_frame=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
    mlflow.set_tracking_uri(mlflow_server.url)
    mlflow.set_experiment("wine")
    with warnings.catch_warnings(), mlflow.start_run():
        warnings.simplefilter("ignore")  # the user's side: MLflow's own advice on type hints
        mlflow.sklearn.log_model(
            sk_model=model,
            name="model",
            signature=infer_signature(x, model.predict_proba(x)),
            input_example=x.head(3),
            pyfunc_predict_fn="predict_proba",
            registered_model_name="wine-classifier",
            pip_requirements=[f"scikit-learn=={sklearn.__version__}", f"skops=={skops.__version__}"],
        )
    return "models:/wine-classifier/1"


def test_an_mlflow_model_on_a_table_is_adopted_composed_and_built(cli: Cli, tmp_path: Path, wine_model: str) -> None:
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump(WINE_OVERLAY))
    work = tmp_path / "work"  # the user's working directory: adopting writes nothing there (MLflow's
    work.mkdir()  # default store, ./mlflow.db, was created by resolving models:/ with the registry URI only)
    adopt = dataclasses.replace(cli, cwd=work)
    got = json.loads(
        adopt.ok("module", "adopt", wine_model, "--name", "wine", "--overlay", str(overlay), "-o", "json").out
    )
    assert not list(work.iterdir()), sorted(p.name for p in work.iterdir())
    shown = json.loads(cli.ok("module", "show", f"wine@{got['version']}", "-o", "json").out)
    table = shown["contract"]["inputs"]["features"]
    assert table["dtype"] == "table" and table["columns"]["alcohol"] == {"dtype": "float64", "required": True}
    assert len(table["columns"]) == 13 and shown["runtime"]["kind"] == "mlflow"
    record = {"alcohol": 13.2, "malic_acid": 1.78, "ash": 2.14, "alcalinity_of_ash": 11.2, "magnesium": 100.0,
              "total_phenols": 2.65, "flavanoids": 2.76, "nonflavanoid_phenols": 0.26, "proanthocyanins": 1.28,
              "color_intensity": 4.38, "hue": 1.05, "od280/od315_of_diluted_wines": 3.4, "proline": 1050.0}  # fmt: skip
    system = {
        "apiVersion": "modship.dev/v1alpha1",
        "kind": "System",
        "metadata": {"name": "wine"},
        "spec": {
            "input": {"wine": table},
            "steps": [{"name": "head", "module": f"wine@{got['version']}", "inputs": {"features": "input.wine"}}],
            "smoke": [{"input": {"wine": record}, "expect": {"label": "class_0"}}],
        },
    }
    path = tmp_path / "wine.yaml"
    path.write_text(yaml.safe_dump(system))
    cli.ok("system", "build", str(path))  # the smoke case goes through the pipeline as a record


def test_an_overlay_that_contradicts_the_signature_is_refused(cli: Cli, tmp_path: Path, wine_model: str) -> None:
    before = cli.ok("module", "list", "-o", "json").out
    overlay = tmp_path / "overlay.yaml"
    bad = {**WINE_OVERLAY, "contract": {"outputs": {"output": {"dtype": "float32", "shape": [-1, 4]}}}}
    overlay.write_text(yaml.safe_dump(bad))
    r = cli("module", "adopt", wine_model, "--name", "wine-bad", "--overlay", str(overlay))
    assert r.code == 2 and "contradicts the model's signature" in r.err and "Traceback" not in r.err, r.err
    assert r.err.startswith(f"error: adopting {wine_model}: contract.outputs.output")
    assert cli.ok("module", "list", "-o", "json").out == before
    r = cli("module", "adopt", wine_model, "--name", "wine-bad")
    assert r.code == 2 and "metadata.license" in r.err, r.err  # metadata nobody gave is asked for, not invented
