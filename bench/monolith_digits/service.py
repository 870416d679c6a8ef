"""The baseline for ``bench/digits.py``: the digit reader as one hand-written BentoML service.

What a team would write without modship, calling the same model files in the same order as the
composed ``digit-reader`` system (``examples/digits/system.yaml``): input checks (8x8 images, values
in 0..16, at most 64) -> scaling to pixel vectors in [0, 1] (the python component's params) -> the
16-component PCA graph on ONNX Runtime -> the scikit-learn head from MLflow as pyfunc
(``predict_proba``), with the uniform default answer if the head raises. No module registry,
digests, per-step metrics, traces or caches: BentoML's own ``/metrics`` only.

``models/`` holds the files copied from the registered modules (``pca16.onnx``, the MLflow model
folder ``head/``) and ``config.yaml``, the component's params; ``bench/digits.py`` stages them and
runs ``bentoml build``. ONNX Runtime gets one intra-op thread and sync requests run on up to four
threads, as in the composed service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import yaml
from bentoml.exceptions import InvalidArgument

MODELS = Path(__file__).resolve().parent / "models"
LABELS = [str(i) for i in range(10)]


@bentoml.service(name="digits-monolith", workers=1, threads=4, traffic={"timeout": 60})
class DigitReader:
    def __init__(self) -> None:
        import mlflow.pyfunc
        import onnxruntime as ort

        cfg = yaml.safe_load((MODELS / "config.yaml").read_text())
        self.scale = float(cfg["digits-preprocess-v1"].get("scale", 16.0))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.pca = ort.InferenceSession(str(MODELS / "pca16.onnx"), opts, providers=["CPUExecutionProvider"])
        self.head = mlflow.pyfunc.load_model(str(MODELS / "head"))

    @bentoml.api
    def predict(self, image: list[Any]) -> dict[str, Any]:
        images = np.asarray(image, dtype=np.float32)
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3 or images.shape[1:] != (8, 8) or not 1 <= len(images) <= 64:
            raise InvalidArgument("give 1-64 images of 8x8")
        if not np.isfinite(images).all() or images.min() < 0 or images.max() > 16:
            raise InvalidArgument("pixel values must be in 0..16")
        pixels = np.clip(images.reshape(len(images), -1) / self.scale, 0.0, 1.0)
        features = self.pca.run(None, {"pixels": pixels})[0]
        try:
            probs = np.asarray(self.head.predict(features), dtype=np.float64)
        except Exception:
            probs = np.full((len(images), 10), 0.1)
        best = probs.argmax(axis=1)
        return {
            "outputs": {"output": probs.round(6).tolist()},
            "prediction": [
                {"label": LABELS[i], "confidence": round(float(p[i]), 6)} for i, p in zip(best, probs, strict=True)
            ],
        }
