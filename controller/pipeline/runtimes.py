"""Runtimes for the models people already have: any ONNX graph, any MLflow model, a Python component.

Each is a kernel kind beside the built-in ones (``kernels.KINDS``) and checks, when it loads, that
the module's contract agrees with the model itself: graph inputs and outputs for ONNX, the
signature for MLflow, the returned ports for a component. Loading happens at registration and at
build, so a module that does not load, or whose contract lies about it, never reaches a system.

- ``onnx``    ``files.model``: the graph. Ports map to graph inputs and outputs by name;
              ``params.inputs`` / ``params.outputs`` rename (``{port: graph_name}``).
- ``mlflow``  ``files.model``: an MLflow model folder (anything that loads as pyfunc). A table
              input port becomes a DataFrame; tensor ports are passed as arrays.
- ``python``  ``entrypoint: FILE.py:ClassName`` inside the module folder; the folder is imported
              as a private package (relative imports work, nothing else is put on ``sys.path``).
              ``ClassName(root, params)`` is built once; ``instance(batch)`` (or ``.predict``)
              maps ``{port: values}`` to ``{port: values}``.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from controller.errors import SpecError
from controller.pipeline import values
from controller.pipeline.errors import Batch, KernelError
from controller.registry import signatures
from controller.spec.modules import Contract, ModuleManifest, Port

_ONNX_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}


def conform(out: Mapping[str, Any], ports: Mapping[str, Port], rows: int, *, who: str) -> dict[str, Any]:
    """The outputs a model returned, checked against the contract: every port, one row per input."""
    result: dict[str, Any] = {}
    for name, port in ports.items():
        if name not in out:
            raise KernelError(f"{who} returned no output {name!r} (returned {sorted(out)})")
        v = out[name]
        if port.dtype == "table":
            v = v if isinstance(v, values.Table) else _frame_to_table(v)
        elif port.dtype == "string":
            v = [str(x) for x in (v.tolist() if isinstance(v, np.ndarray) else v)]
        else:
            v = np.asarray(v, dtype=np.bool_ if port.dtype == "bool" else values.NUMPY[port.dtype])
            if port.shape and v.ndim != len(port.shape):
                raise KernelError(f"{who}: output {name!r} has shape {list(v.shape)}, contract {list(port.shape)}")
        if values.size(v) != rows:
            raise KernelError(f"{who}: output {name!r} has {values.size(v)} rows for {rows} input rows")
        result[name] = v
    return result


def _frame_to_table(frame: Any) -> values.Table:
    cols = {str(c): frame[c].to_numpy() for c in frame.columns}
    return values.Table(cols, len(frame))


def _rows(batch: Batch) -> int:
    return values.size(next(iter(batch.values())))


def session_options(params: dict[str, Any]) -> Any:
    """onnxruntime options for one module: ``threads`` intra-op threads (default 1) and no memory
    arena unless ``arena: true``. An arena keeps the high-water mark of every batch it has seen: one
    burst of long texts in a full batch (after a crash, the backlog) grows a worker by ~450 MB for
    good; without it, the memory goes back once the batch is done, at no measurable cost per call."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(params.get("threads", 1))
    opts.inter_op_num_threads = 1
    opts.enable_cpu_mem_arena = bool(params.get("arena", False))
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


class OnnxGraph:
    """Any ONNX graph on onnxruntime (CPU)."""

    def __init__(self, root: Path, manifest: ModuleManifest) -> None:
        import onnxruntime as ort

        p, contract = manifest.runtime.params, manifest.contract
        opts = session_options(p)
        try:
            self.session = ort.InferenceSession(
                str(root / manifest.runtime.files["model"]), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise SpecError(f"the ONNX graph does not load: {_first_line(exc)}", field="runtime.files.model") from None
        self.inputs = {port: str(p.get("inputs", {}).get(port, port)) for port in contract.inputs}
        self.outputs = {port: str(p.get("outputs", {}).get(port, port)) for port in contract.outputs}
        graph_in = {i.name: i for i in self.session.get_inputs()}
        graph_out = {o.name: o for o in self.session.get_outputs()}
        problems = _graph_problems("inputs", contract.inputs, self.inputs, graph_in)
        problems += _graph_problems("outputs", contract.outputs, self.outputs, graph_out)
        unfed = sorted(set(graph_in) - set(self.inputs.values()))
        if unfed:
            problems.append(("contract.inputs", f"graph input {unfed[0]!r} is not fed by any port"))
        if problems:
            field, reason = problems[0]
            raise SpecError(reason, field=field)
        self.dtypes = {port: _ONNX_TYPES[graph_in[g].type] for port, g in self.inputs.items()}
        self.contract = contract

    def __call__(self, batch: Batch) -> dict[str, Any]:
        feed = {g: _as(batch[port], self.dtypes[port]) for port, g in self.inputs.items()}
        got = self.session.run(list(self.outputs.values()), feed)
        return conform(dict(zip(self.outputs, got, strict=True)), self.contract.outputs, _rows(batch), who="onnx")


def _as(v: Any, dtype: str) -> np.ndarray:
    if dtype == "string":
        return np.asarray(v, dtype=object)
    return np.asarray(v, dtype=np.bool_ if dtype == "bool" else values.NUMPY[dtype])


def _graph_problems(
    side: str, ports: Mapping[str, Port], names: Mapping[str, str], graph: Mapping[str, Any]
) -> list[tuple[str, str]]:
    problems = []
    for port, gname in names.items():
        field = f"contract.{side}.{port}"
        node = graph.get(gname)
        if node is None:
            problems.append((field, f"the graph has no {side[:-1]} {gname!r} (has {sorted(graph)})"))
            continue
        declared = ports[port]
        dtype = _ONNX_TYPES.get(node.type)
        if dtype is None:
            problems.append((field, f"graph {side[:-1]} {gname!r} has type {node.type}, which modship cannot carry"))
            continue
        shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in (node.shape or ()))
        graph_port = Port(dtype=dtype, shape=shape)
        reasons = signatures.contradictions(declared, graph_port)
        problems += [(field, f"graph {side[:-1]} {gname!r}: {r}") for r in reasons]
    return problems


class MlflowModel:
    """Any MLflow model that loads as pyfunc; its signature must agree with the contract."""

    def __init__(self, root: Path, manifest: ModuleManifest) -> None:
        import mlflow.pyfunc

        model_dir = root / manifest.runtime.files["model"]
        try:
            self.model = mlflow.pyfunc.load_model(str(model_dir))
        except Exception as exc:
            raise SpecError(
                f"the MLflow model does not load: {_first_line(exc)}", field="runtime.files.model"
            ) from None
        signature = self.model.metadata.signature
        if signature is not None:
            derived = derive_contract(signature)
            problems = signatures.contract_contradictions(manifest.contract, derived)
            if problems:
                field, reason = problems[0]
                raise SpecError(f"contradicts the model's signature: {reason}", field=field)
        self.contract = manifest.contract
        self.table_input = next((n for n, p in manifest.contract.inputs.items() if p.dtype == "table"), None)

    def __call__(self, batch: Batch) -> dict[str, Any]:
        rows = _rows(batch)
        if self.table_input is not None:
            data: Any = batch[self.table_input].to_frame()
        elif len(batch) == 1:
            data = np.asarray(next(iter(batch.values())))
        else:
            data = {k: np.asarray(v) for k, v in batch.items()}
        pred = self.model.predict(data)
        return conform(_outputs(pred, self.contract.outputs), self.contract.outputs, rows, who="mlflow model")


def _outputs(pred: Any, ports: Mapping[str, Port]) -> dict[str, Any]:
    """Map whatever predict returned (array, DataFrame, Series, dict, list) onto the output ports."""
    if isinstance(pred, dict):
        return pred
    if hasattr(pred, "columns") and len(ports) > 1:
        return {str(c): pred[c].to_numpy() for c in pred.columns}
    name = next(iter(ports))
    if ports[name].dtype == "table":
        return {name: pred}
    if hasattr(pred, "to_numpy"):
        pred = pred.to_numpy()
    arr = np.asarray(pred)
    want = ports[name].shape
    if want and len(want) == 1 and arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    return {name: arr}


_MLFLOW_TYPES = {
    "double": "float64",
    "float": "float32",
    "long": "int64",
    "integer": "int32",
    "boolean": "bool",
    "string": "string",
}


def derive_contract(signature: Any, *, table_port: str = "features") -> Contract:
    """The contract an MLflow signature implies: column schemas are one table port, tensors one
    port each (unnamed: ``input`` / ``output``); meaning (space, labels, ranges) is left for the user."""
    return Contract(
        inputs=_ports(signature.inputs, table_port, "input"),
        outputs=_ports(signature.outputs, "prediction", "output"),
    )


def _ports(schema: Any, column_port: str, tensor_default: str) -> dict[str, Port]:
    from controller.spec.modules import Column

    if schema is None:
        raise SpecError("the model's signature has no schema here: declare the contract yourself", field="contract")
    if schema.is_tensor_spec():
        out = {}
        for spec in schema.inputs:
            dtype = np.dtype(spec.type).name
            if dtype not in (*values.NUMPY, "bool"):
                raise SpecError(f"tensor {spec.name!r} has dtype {dtype}, which modship cannot carry", field="contract")
            out[spec.name or tensor_default] = Port(dtype=dtype, shape=tuple(spec.shape))
        return out
    cols = {}
    for spec in schema.inputs:
        t = _MLFLOW_TYPES.get(getattr(spec.type, "name", str(spec.type)))
        if t is None:
            raise SpecError(f"column {spec.name!r} has type {spec.type}, which modship cannot carry", field="contract")
        if spec.name is None:
            if len(schema.inputs) == 1:
                return {column_port: Port(dtype=t, shape=(-1,))}
            raise SpecError("the signature has unnamed columns: declare the contract yourself", field="contract")
        cols[spec.name] = Column(dtype=t, required=bool(getattr(spec, "required", True)))
    return {column_port: Port(dtype="table", shape=(-1,), columns=cols)}


class PythonComponent:
    """A component class in the verified module folder (see the module docstring)."""

    def __init__(self, root: Path, manifest: ModuleManifest) -> None:
        assert manifest.runtime.entrypoint is not None
        rel, _, cls_name = manifest.runtime.entrypoint.partition(":")
        root = root.resolve()
        path = (root / rel).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise SpecError(f"{rel!r} is not a file inside the module directory", field="runtime.entrypoint")
        package = "modship_component_" + hashlib.sha256(str(root).encode()).hexdigest()[:16]
        if package not in sys.modules:
            pkg = types.ModuleType(package)
            pkg.__path__ = [str(root)]
            sys.modules[package] = pkg
        dotted = ".".join(path.relative_to(root).with_suffix("").parts)
        try:
            module = importlib.import_module(f"{package}.{dotted}")
            cls = getattr(module, cls_name)
            self.instance = cls(root, dict(manifest.runtime.params))
        except AttributeError:
            raise SpecError(f"{rel} has no class {cls_name!r}", field="runtime.entrypoint") from None
        except SpecError:
            raise
        except Exception as exc:
            raise SpecError(
                f"the component does not load: {type(exc).__name__}: {_first_line(exc)}", field="runtime.entrypoint"
            ) from None
        fn = getattr(self.instance, "predict", None) or self.instance
        if not callable(fn):
            raise SpecError(f"{cls_name} instances are not callable and have no predict()", field="runtime.entrypoint")
        self.fn = fn
        self.outputs = manifest.contract.outputs

    def __call__(self, batch: Batch) -> dict[str, Any]:
        out = self.fn(dict(batch))
        if not isinstance(out, Mapping):
            raise KernelError(f"the component returned {type(out).__name__}, not a mapping of output ports")
        return conform(out, self.outputs, _rows(batch), who="component")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
