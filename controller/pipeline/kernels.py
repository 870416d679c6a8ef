"""Kernels: how a module version is executed, chosen by its manifest's ``runtime.kind``.

A kernel is loaded from a verified module directory and maps a batch of named inputs to a batch of
named outputs (``{port: list | ndarray}``, batch first). Kernels hold no global state; faults from
``runtime.faults`` (chaos testing) are injected around them by ``faults.wrap``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from controller.errors import SpecError
from controller.pipeline import faults as faults_
from controller.pipeline import runtimes, values
from controller.pipeline.errors import Batch, GuardRejected, Kernel, KernelError
from controller.spec.modules import ModuleManifest

__all__ = ["KINDS", "Batch", "GuardRejected", "Kernel", "KernelError", "golden_failures", "load"]


def _one(ports: Mapping[str, Any]) -> str:
    return next(iter(ports))


class OnnxTextEncoder:
    """Text -> sentence embedding with an ONNX transformer and a ``tokenizers`` tokenizer.

    params: max_length (truncation), pooling ``mean`` (over the attention mask) or ``none`` (the
    model already pools), normalize (L2), output (the ONNX output name), token_type_ids (feed zeros).
    """

    def __init__(self, root: Path, manifest: ModuleManifest) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        p = manifest.runtime.params
        self.max_length = int(p.get("max_length", 256))
        self.pooling = str(p.get("pooling", "mean"))
        self.normalize = bool(p.get("normalize", True))
        self.output = p.get("output")
        self.token_type_ids = bool(p.get("token_type_ids", True))
        files = manifest.runtime.files
        tok = Tokenizer.from_file(str(root / files["tokenizer"]))
        tok.enable_truncation(self.max_length)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")
        self.tokenizer = tok
        opts = runtimes.session_options(p)
        self.session = ort.InferenceSession(str(root / files["model"]), opts, providers=["CPUExecutionProvider"])
        self.in_port = _one(manifest.contract.inputs)
        self.out_port = _one(manifest.contract.outputs)

    def __call__(self, batch: Batch) -> dict[str, Any]:
        texts = list(batch[self.in_port])
        enc = self.tokenizer.encode_batch(texts)  # padded to the longest text
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in enc], dtype=np.int64)
        if len(texts) <= 1:
            return {self.out_port: self._embed(ids, mask)}
        lengths = mask.sum(axis=1)
        parts = []
        for rows in sub_batches(lengths):  # each padded only to its own longest text
            n = int(lengths[rows].max())
            parts.append((rows, self._embed(ids[rows, :n], mask[rows, :n])))
        emb = np.empty((len(texts), parts[0][1].shape[1]), dtype=np.float32)
        for rows, e in parts:
            emb[rows] = e
        return {self.out_port: emb}

    def _embed(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed: dict[str, np.ndarray] = {"input_ids": ids, "attention_mask": mask}
        if self.token_type_ids:
            feed["token_type_ids"] = np.zeros_like(ids)
        out = self.session.run([self.output] if self.output else None, feed)[0]
        if self.pooling == "mean":
            m = mask[..., None].astype(np.float32)
            out = (out * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        emb = np.asarray(out, dtype=np.float32)
        if self.normalize:
            emb = emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)
        return emb


SUB_BATCH_ROWS = 16  # rows per model run at most: CPU per text is flat from 8 to 16 rows, worse at 32
PAD_WASTE = 0.25  # a run ends before padding would exceed this share of its tokens


def sub_batches(lengths: np.ndarray) -> list[np.ndarray]:
    """Row indices of each model run for texts of ``lengths`` tokens: sorted by length, cut where
    padding to the longest would waste more than ``PAD_WASTE`` of the tokens or at ``SUB_BATCH_ROWS``.
    A transformer's cost grows with the padded length, so one long text must not pad many short ones."""
    order = np.argsort(lengths, kind="stable")
    runs: list[np.ndarray] = []
    start, total = 0, 0
    for i, row in enumerate(order):
        n, longest = i - start + 1, int(lengths[row])
        if n > 1 and (n > SUB_BATCH_ROWS or 1 - (total + longest) / (longest * n) > PAD_WASTE):
            runs.append(order[start:i])
            start, total = i, 0
        total += longest
    runs.append(order[start:])
    return runs


class Linear:
    """y = x W + b (an alignment adapter, e.g. orthogonal Procrustes); optional L2 normalisation."""

    def __init__(self, root: Path, manifest: ModuleManifest) -> None:
        with np.load(root / manifest.runtime.files["weights"]) as w:
            self.w = np.asarray(w["W"], dtype=np.float32)
            self.b = np.asarray(w["b"], dtype=np.float32) if "b" in w else np.zeros(self.w.shape[1], np.float32)
        self.normalize = bool(manifest.runtime.params.get("normalize", True))
        self.in_port = _one(manifest.contract.inputs)
        self.out_port = _one(manifest.contract.outputs)

    def __call__(self, batch: Batch) -> dict[str, Any]:
        y = np.asarray(batch[self.in_port], dtype=np.float32) @ self.w + self.b
        if self.normalize:
            y = y / np.clip(np.linalg.norm(y, axis=1, keepdims=True), 1e-12, None)
        return {self.out_port: y.astype(np.float32)}


class SoftmaxLinear:
    """A multinomial logistic-regression head: probabilities over the contract's label set."""

    def __init__(self, root: Path, manifest: ModuleManifest) -> None:
        with np.load(root / manifest.runtime.files["weights"]) as w:
            self.coef = np.asarray(w["coef"], dtype=np.float32)
            self.intercept = np.asarray(w["intercept"], dtype=np.float32)
        self.temperature = float(manifest.runtime.params.get("temperature", 1.0))
        self.in_port = _one(manifest.contract.inputs)
        self.out_port = _one(manifest.contract.outputs)

    def __call__(self, batch: Batch) -> dict[str, Any]:
        x = np.asarray(batch[self.in_port], dtype=np.float32)
        z = (x @ self.coef.T + self.intercept) / self.temperature
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return {self.out_port: (e / e.sum(axis=1, keepdims=True)).astype(np.float32)}


class ConfidenceEvaluator:
    """Scores a probability vector: ``score`` = top probability, ``passed`` = score and margin clear
    their thresholds. The pass rate is an ML-aware signal for canary analysis."""

    def __init__(self, root: Path, manifest: ModuleManifest) -> None:
        p = manifest.runtime.params
        self.min_confidence = float(p.get("min_confidence", 0.5))
        self.min_margin = float(p.get("min_margin", 0.0))
        self.in_port = _one(manifest.contract.inputs)

    def __call__(self, batch: Batch) -> dict[str, Any]:
        probs = np.asarray(batch[self.in_port], dtype=np.float32)
        top2 = np.sort(probs, axis=1)[:, -2:] if probs.shape[1] > 1 else np.hstack([probs * 0, probs])
        score = top2[:, 1]
        passed = (score >= self.min_confidence) & ((top2[:, 1] - top2[:, 0]) >= self.min_margin)
        return {"score": score.astype(np.float32), "passed": passed}


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class TextGuard:
    """Validates and sanitises text: size limit, Unicode normalisation, control characters, deny
    patterns. Rejections raise GuardRejected with a reason a client can act on."""

    def __init__(self, root: Path, manifest: ModuleManifest) -> None:
        p = manifest.runtime.params
        self.max_chars = int(p.get("max_chars", 10_000))
        self.min_chars = int(p.get("min_chars", 1))
        self.strip_control = bool(p.get("strip_control", True))
        self.deny = [re.compile(x) for x in p.get("deny_patterns", [])]
        self.in_port = _one(manifest.contract.inputs)
        self.out_port = _one(manifest.contract.outputs)

    def __call__(self, batch: Batch) -> dict[str, Any]:
        return {self.out_port: [self.check(t) for t in batch[self.in_port]]}

    def check(self, text: str) -> str:
        if not isinstance(text, str):
            raise GuardRejected(f"expected text, got {type(text).__name__}")
        text = unicodedata.normalize("NFC", text)
        if self.strip_control:
            text = _CONTROL.sub("", text)
        text = text.strip()
        if len(text) < self.min_chars:
            raise GuardRejected(f"text is shorter than {self.min_chars} character(s)")
        if len(text) > self.max_chars:
            raise GuardRejected(f"text has {len(text)} characters, the limit is {self.max_chars}")
        for pat in self.deny:
            if pat.search(text):
                raise GuardRejected(f"text matches a denied pattern ({pat.pattern!r})")
        return text


KINDS: dict[str, Callable[[Path, ModuleManifest], Kernel]] = {
    "onnx-text-encoder": OnnxTextEncoder,
    "linear": Linear,
    "softmax-linear": SoftmaxLinear,
    "confidence-evaluator": ConfidenceEvaluator,
    "text-guard": TextGuard,
    "onnx": runtimes.OnnxGraph,
    "mlflow": runtimes.MlflowModel,
    "python": runtimes.PythonComponent,
}
_NEEDS = {"onnx": ("model",), "mlflow": ("model",), "onnx-text-encoder": ("model", "tokenizer")}


def load(root: Path, manifest: ModuleManifest, *, faults: bool = True) -> Kernel:
    """Instantiate the kernel for a verified module directory.

    ``faults=False`` leaves out injected faults: contract tests check a module's function, while
    chaos faults exist to exercise fallbacks and rollbacks in running systems.
    """
    factory = KINDS.get(manifest.runtime.kind)
    if factory is None:
        raise SpecError(
            f"unknown runtime kind {manifest.runtime.kind!r} (known: {', '.join(sorted(KINDS))})",
            field="runtime.kind",
        )
    for name in _NEEDS.get(manifest.runtime.kind, ()):
        if name not in manifest.runtime.files:
            raise SpecError(f"runtime kind {manifest.runtime.kind!r} needs files.{name}", field="runtime.files")
    if manifest.runtime.kind == "python" and not manifest.runtime.entrypoint:
        raise SpecError("runtime kind 'python' needs entrypoint: FILE.py:ClassName", field="runtime.entrypoint")
    try:
        kernel = factory(root, manifest)
    except SpecError:
        raise
    except Exception as exc:  # weights that do not load: a bad module, named as such
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise SpecError(f"the module does not load: {type(exc).__name__}: {detail}", field="runtime") from None
    return faults_.wrap(kernel, manifest) if faults else kernel


def golden_failures(root: Path, manifest: ModuleManifest, kernel: Kernel | None = None) -> list[str]:
    """Run the module's golden inputs; every output outside tolerance, as a readable line."""
    import json

    g = manifest.golden
    if g is None:
        return []
    try:
        doc = json.loads((root / g.file).read_text())
        batch = {p: values.decode(p, manifest.contract.inputs[p], v) for p, v in doc["inputs"].items()}
        expected = doc["outputs"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{g.file} is not a golden file ({{inputs: ..., outputs: ...}} matching the contract): {exc}"]
    try:
        got = (kernel or load(root, manifest, faults=False))(batch)
    except SpecError:
        raise
    except Exception as exc:
        return [f"golden inputs raised {type(exc).__name__}: {exc}"]
    failures = []
    for port, want in expected.items():
        if port not in got:
            failures.append(f"golden output {port!r} was not produced")
            continue
        failures += _differs(port, values.encode(got[port]), want, g.tolerance)
    return failures


def _differs(port: str, got: Any, want: Any, tolerance: float) -> list[str]:
    try:
        a, b = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    except (TypeError, ValueError):
        if got == want:
            return []
        return [f"golden output {port!r} differs: got {str(got)[:80]}, expected {str(want)[:80]}"]
    if a.shape != b.shape:
        return [f"golden output {port!r} has shape {list(a.shape)}, expected {list(b.shape)}"]
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    if not diff <= tolerance:
        return [f"golden output {port!r} differs by {diff:.3g} (tolerance {tolerance:g})"]
    return []
