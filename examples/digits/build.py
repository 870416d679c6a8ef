"""The second example domain: reading handwritten digits (8x8 images), from three kinds of module.

    python examples/digits/build.py --out DIR --tracking-uri URI [--report FILE]

Data: scikit-learn's bundled digits (1,797 images, read from the package; no download). Built:

- ``DIR/digits-preprocess-v1``: a **python** component (``component.py:Preprocess``) scaling an
  image batch [-1, 8, 8] in [0, 16] to pixel vectors [-1, 64] in [0, 1];
- ``DIR/digits-pca-v1``: an **onnx** graph (Sub + MatMul, written with the ``onnx`` package):
  the 16-component PCA of the training pixels, the space ``digits-pca16-v1``;
- three scikit-learn heads on those features, logged to **MLflow** (``mlflow.sklearn.log_model``,
  ``predict_proba``) as versions of the registered model ``digits-classifier``, to be adopted with
  ``modship module adopt``: v1 a regularised logistic regression, v2 a better one, v3 trained on
  misaligned labels (a join bug shifted the labels of digits 5-9 by one: it answers confidently and
  wrongly on half the classes; a canary must catch it).

The report gives the held-out accuracy of each head and how often v2 and v3 disagree with v1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

MODEL = "digits-classifier"
SPACE = "digits-pca16-v1"
LABELS = [str(i) for i in range(10)]
OWNERS = ["team-vision@example.com"]
DATA = "pypi:scikit-learn==1.9.1#sklearn.datasets.load_digits"

COMPONENT = '''"""Scale 8x8 digit images (0..16) to pixel vectors in [0, 1]: a modship python component."""

import numpy as np


class Preprocess:
    def __init__(self, root, params):
        self.scale = float(params.get("scale", 16.0))

    def __call__(self, batch):
        images = np.asarray(batch["image"], dtype=np.float32)
        pixels = images.reshape(len(images), -1) / self.scale
        return {"pixels": np.clip(pixels, 0.0, 1.0)}
'''


def load() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = d.images.astype(np.float32)
    return train_test_split(images, d.target, test_size=0.3, random_state=0, stratify=d.target)  # type: ignore[no-any-return]


def module(out: Path, manifest: dict[str, Any], files: dict[str, bytes | str]) -> Path:
    root = out / f"{manifest['name']}-v1"
    root.mkdir(parents=True)
    for rel, data in files.items():
        (root / rel).write_bytes(data.encode() if isinstance(data, str) else data)
    (root / "module.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return root


def pca_graph(mean: np.ndarray, components: np.ndarray) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Sub", ["pixels", "mean"], ["centered"]),
            helper.make_node("MatMul", ["centered", "projection"], ["features"]),
        ],
        "digits-pca16",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", components.shape[0]])],
        [
            numpy_helper.from_array(mean.astype(np.float32), "mean"),
            numpy_helper.from_array(components.T.astype(np.float32).copy(), "projection"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modship-examples")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def golden(inputs: dict[str, Any], outputs: dict[str, Any]) -> str:
    return json.dumps({"inputs": inputs, "outputs": outputs})


def build(out: Path, tracking_uri: str) -> dict[str, Any]:
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    x_train, x_test, y_train, y_test = load()
    pixels_train = x_train.reshape(len(x_train), -1) / 16.0
    pixels_test = x_test.reshape(len(x_test), -1) / 16.0
    sample = x_test[:4]

    module(
        out,
        {
            "apiVersion": "modship.dev/v1alpha1",
            "kind": "Module",
            "name": "digits-preprocess",
            "role": "transform",
            "runtime": {
                "kind": "python",
                "entrypoint": "component.py:Preprocess",
                "params": {"scale": 16.0},
                "batchable": True,
            },
            "contract": {
                "inputs": {"image": {"dtype": "float32", "shape": [-1, 8, 8], "range": [0, 16]}},
                "outputs": {"pixels": {"dtype": "float32", "shape": [-1, 64], "range": [0, 1]}},
            },
            "metadata": {
                "description": "8x8 digit images (0..16) to pixel vectors in [0, 1]",
                "license": "Apache-2.0",
                "stability": "stable",
                "owners": OWNERS,
            },
            "golden": {"file": "golden.json", "tolerance": 1e-6},
        },
        {
            "component.py": COMPONENT,
            "golden.json": golden(
                {"image": sample.tolist()}, {"pixels": (sample.reshape(4, -1) / 16.0).round(6).tolist()}
            ),
        },
    )

    pca = PCA(n_components=16, random_state=0).fit(pixels_train)
    feats_train = pca.transform(pixels_train).astype(np.float32)
    feats_test = pca.transform(pixels_test).astype(np.float32)
    module(
        out,
        {
            "apiVersion": "modship.dev/v1alpha1",
            "kind": "Module",
            "name": "digits-pca",
            "role": "encoder",
            "runtime": {"kind": "onnx", "files": {"model": "pca16.onnx"}, "batchable": True},
            "contract": {
                "inputs": {"pixels": {"dtype": "float32", "shape": [-1, 64], "range": [0, 1]}},
                "outputs": {"features": {"dtype": "float32", "shape": [-1, 16], "space": SPACE}},
            },
            "metadata": {
                "description": "16-component PCA of digit pixels (explained variance "
                f"{pca.explained_variance_ratio_.sum():.3f})",
                "provenance": {"trainingData": DATA},
                "license": "Apache-2.0",
                "stability": "stable",
                "owners": OWNERS,
            },
            "golden": {"file": "golden.json", "tolerance": 1e-4},
        },
        {
            "pca16.onnx": pca_graph(pca.mean_, pca.components_),
            "golden.json": golden(
                {"pixels": pixels_test[:4].round(6).tolist()},
                {"features": pca.transform(pixels_test[:4].round(6)).round(6).tolist()},
            ),
        },
    )

    shifted = np.where(y_train >= 5, 5 + (y_train - 4) % 5, y_train)  # 5->6, ..., 9->5
    heads = {
        1: ("regularised logistic regression (C=0.02)", LogisticRegression(C=0.02, max_iter=5000), y_train),
        2: ("logistic regression (C=1)", LogisticRegression(C=1.0, max_iter=5000), y_train),
        3: ("logistic regression on misaligned labels", LogisticRegression(C=1.0, max_iter=5000), shifted),
    }
    import sklearn
    import skops

    requirements = [f"scikit-learn=={sklearn.__version__}", f"skops=={skops.__version__}", f"numpy=={np.__version__}"]
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("digits")
    report: dict[str, Any] = {"explainedVariance": float(pca.explained_variance_ratio_.sum())}
    preds = {}
    for v, (what, clf, labels) in heads.items():
        clf.fit(feats_train, labels)
        proba = clf.predict_proba(feats_test)
        preds[v] = proba.argmax(axis=1)
        report[f"head v{v} accuracy"] = float((preds[v] == y_test).mean())
        with contextlib.redirect_stdout(io.StringIO()), mlflow.start_run(run_name=f"digits-head-v{v}"):
            mlflow.log_params({"model": what, "C": clf.C})
            mlflow.log_metric("accuracy", report[f"head v{v} accuracy"])
            mlflow.sklearn.log_model(
                sk_model=clf,
                name="model",
                signature=infer_signature(feats_test, proba),
                input_example=feats_test[:3],
                pyfunc_predict_fn="predict_proba",
                pip_requirements=requirements,  # inferring them would start a resolver that needs the network
                registered_model_name=MODEL,
            )
    for v in (2, 3):
        report[f"head v{v} disagrees with v1"] = float((preds[v] != preds[1]).mean())
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tracking-uri", required=True)
    ap.add_argument("--report", type=Path)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report = build(args.out, args.tracking_uri)
    text = json.dumps(report, indent=2)
    if args.report:
        args.report.write_text(text)
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
