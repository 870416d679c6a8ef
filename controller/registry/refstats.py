"""Reference input statistics recorded with a module version, and drift measures against them.

Stored as a JSON artifact at registration; later compared with live inputs (input drift checks).
Histograms use fixed bin edges from the reference so live counts can be compared bin by bin.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

TEXT_LENGTH_EDGES = (0, 20, 40, 60, 80, 100, 140, 200, 300, 500, 1000, 2000, 5000)


def histogram(values: Sequence[float] | np.ndarray, edges: Sequence[float]) -> list[int]:
    """Counts per bin; the last bin is open-ended (everything at or above its lower edge)."""
    arr = np.asarray(values, dtype=np.float64)
    idx = np.clip(np.searchsorted(np.asarray(edges, dtype=np.float64), arr, side="right") - 1, 0, len(edges) - 1)
    return [int(c) for c in np.bincount(idx, minlength=len(edges))]


def text_stats(texts: Sequence[str]) -> dict[str, Any]:
    lengths = [len(t) for t in texts]
    return {
        "kind": "text",
        "count": len(texts),
        "chars": {
            "mean": float(np.mean(lengths)),
            "std": float(np.std(lengths)),
            "edges": list(TEXT_LENGTH_EDGES),
            "hist": histogram(lengths, TEXT_LENGTH_EDGES),
        },
    }


def vector_stats(x: np.ndarray, *, bins: int = 10) -> dict[str, Any]:
    """Mean and spread per dimension, plus the histogram of the projection onto the mean direction
    (a 1-D summary whose shift signals that inputs moved to another region or space)."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    direction = mean / max(float(np.linalg.norm(mean)), 1e-12)
    proj = x @ direction
    qs = np.quantile(proj, np.linspace(0, 1, bins + 1)[1:-1])
    edges = [-math.inf, *qs.tolist()]
    return {
        "kind": "vector",
        "count": int(x.shape[0]),
        "dim": int(x.shape[1]),
        "mean": mean.round(6).tolist(),
        "std": x.std(axis=0).round(6).tolist(),
        "projection": {
            "direction": direction.round(6).tolist(),
            "edges": edges,
            "hist": histogram(proj, edges),
        },
    }


def psi(expected: Sequence[float], actual: Sequence[float], *, eps: float = 1e-4) -> float:
    """Population stability index between two histograms over the same bins (0 = identical;
    > 0.1 moderate shift, > 0.25 large shift, by common convention)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.sum() <= 0 or a.sum() <= 0:
        return 0.0
    e = np.clip(e / e.sum(), eps, None)
    a = np.clip(a / a.sum(), eps, None)
    return float(np.sum((a - e) * np.log(a / e)))


def js_distance(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two count or probability vectors."""
    pa = np.asarray(p, dtype=np.float64)
    qa = np.asarray(q, dtype=np.float64)
    if pa.sum() <= 0 or qa.sum() <= 0:
        return 0.0
    pa, qa = pa / pa.sum(), qa / qa.sum()
    m = (pa + qa) / 2

    def kl(x: np.ndarray, y: np.ndarray) -> float:
        mask = x > 0
        return float(np.sum(x[mask] * np.log2(x[mask] / y[mask])))

    return float(math.sqrt(max(0.0, (kl(pa, m) + kl(qa, m)) / 2)))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, *, bins: int = 10) -> float:
    """ECE: the gap between confidence and accuracy, weighted over confidence bins."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.mean() * abs(conf[mask].mean() - correct[mask].mean())
    return float(ece)
