"""The baseline for ``bench/composed.py``: the topic classifier as one hand-written BentoML service.

What a team would write without modship, calling the same model files in the same order as the
composed ``topic-classifier`` system: input checks -> MiniLM-L6 int8 ONNX encoder (tokenizer
truncation to max_length, padding to the longest, mean pooling over the attention mask, L2
normalisation) -> numpy softmax head (the second head if the first raises) -> confidence score.
No module registry, digests, per-step metrics, traces, caches or timeouts: BentoML's own
``/metrics`` only.

``models/`` holds the files copied from the example modules and ``config.yaml``, their runtime
params; ``bench/setup.py`` stages them and runs ``bentoml build``. ONNX Runtime gets one intra-op
thread and sync requests run on up to four threads, as in the composed service, so the comparison
measures composition and not thread settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import yaml
from bentoml.exceptions import InvalidArgument

MODELS = Path(__file__).resolve().parent / "models"


class Head:
    def __init__(self, path: Path, temperature: float) -> None:
        with np.load(path) as w:
            self.coef = np.asarray(w["coef"], dtype=np.float32)
            self.intercept = np.asarray(w["intercept"], dtype=np.float32)
        self.temperature = temperature

    def __call__(self, x: np.ndarray) -> np.ndarray:
        z = (x @ self.coef.T + self.intercept) / self.temperature
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


@bentoml.service(name="topic-monolith", workers=1, threads=4, traffic={"timeout": 60})
class TopicClassifier:
    def __init__(self) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        cfg = yaml.safe_load((MODELS / "config.yaml").read_text())
        enc = cfg["text-encoder-v1"]
        self.tokenizer = Tokenizer.from_file(str(MODELS / "tokenizer.json"))
        self.tokenizer.enable_truncation(int(enc["max_length"]))
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(MODELS / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.head = Head(MODELS / "head.npz", float(cfg["topic-head-v1"].get("temperature", 1.0)))
        self.fallback = Head(MODELS / "head-fallback.npz", float(cfg["topic-head-v2"].get("temperature", 1.0)))
        self.labels = ["business", "entertainment", "politics", "sport", "tech"]
        self.min_confidence = float(cfg["confidence-v1"]["min_confidence"])
        self.min_margin = float(cfg["confidence-v1"]["min_margin"])

    def embed(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        out = self.session.run(["last_hidden_state"], feed)[0]
        m = mask[..., None].astype(np.float32)
        emb = (out * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        return emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)

    @bentoml.api
    def predict(self, text: str | list[str]) -> dict[str, Any]:
        texts = [t.strip() for t in ([text] if isinstance(text, str) else text)]
        if not texts or len(texts) > 32 or any(not 3 <= len(t) <= 5000 for t in texts):
            raise InvalidArgument("give 1-32 texts of 3-5000 characters")
        emb = self.embed(texts).astype(np.float32)
        try:
            probs = self.head(emb)
        except Exception:
            probs = self.fallback(emb)
        top2 = np.sort(probs, axis=1)[:, -2:]
        best = probs.argmax(axis=1)
        return {
            "outputs": {"probs": probs.astype(np.float64).round(6).tolist()},
            "prediction": [
                {"label": self.labels[i], "confidence": round(float(p[i]), 6)} for i, p in zip(best, probs, strict=True)
            ],
            "evaluation": [
                {"score": round(float(s), 6), "passed": bool(s >= self.min_confidence and s - r >= self.min_margin)}
                for r, s in top2
            ],
        }
