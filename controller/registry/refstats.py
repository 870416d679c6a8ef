"""Reference input statistics recorded with a module version, and drift measures against them.

Stored as a JSON artifact at registration; later compared with live inputs (input drift checks).
Histograms use fixed bin edges from the reference so live counts can be compared bin by bin.

``psi`` and ``js_distance`` are plain Python: the router and the operator (whose image carries no numpy)
compute drift with them. numpy is imported only where reference statistics are recorded.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

TEXT_LENGTH_EDGES = (0, 20, 40, 60, 80, 100, 140, 200, 300, 500, 1000, 2000, 5000)


def histogram(values: Sequence[float] | np.ndarray, edges: Sequence[float]) -> list[int]:
    """Counts per bin; the last bin is open-ended (everything at or above its lower edge)."""
    import numpy as np

    arr = np.asarray(values, dtype=np.float64)
    idx = np.clip(np.searchsorted(np.asarray(edges, dtype=np.float64), arr, side="right") - 1, 0, len(edges) - 1)
    return [int(c) for c in np.bincount(idx, minlength=len(edges))]


def text_stats(texts: Sequence[str]) -> dict[str, Any]:
    import numpy as np

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
    import numpy as np

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
    se, sa = math.fsum(expected), math.fsum(actual)
    if se <= 0 or sa <= 0:
        return 0.0
    e = [max(float(x) / se, eps) for x in expected]
    a = [max(float(x) / sa, eps) for x in actual]
    return math.fsum((ai - ei) * math.log(ai / ei) for ai, ei in zip(a, e, strict=True))


def js_distance(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two count or probability vectors."""
    sp, sq = math.fsum(p), math.fsum(q)
    if sp <= 0 or sq <= 0:
        return 0.0
    pa, qa = [float(x) / sp for x in p], [float(x) / sq for x in q]
    m = [(x + y) / 2 for x, y in zip(pa, qa, strict=True)]

    def kl(x: list[float], y: list[float]) -> float:
        return math.fsum(xi * math.log2(xi / yi) for xi, yi in zip(x, y, strict=True) if xi > 0)

    return math.sqrt(max(0.0, (kl(pa, m) + kl(qa, m)) / 2))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, *, bins: int = 10) -> float:
    """ECE: the gap between confidence and accuracy, weighted over confidence bins."""
    import numpy as np

    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.mean() * abs(conf[mask].mean() - correct[mask].mean())
    return float(ece)
