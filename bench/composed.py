"""(a) What composition costs: the composed ``topic-classifier`` Bento against a hand-written monolith.

The composed service is ``examples/systems/topic-classifier.yaml`` as shipped (guard -> encoder with
its step cache -> head with a fallback and a timeout -> evaluator behind a flag; per-step metrics;
tracing as shipped, i.e. ``MODSHIP_TRACING`` unset = the console exporter). The monolith
(``bench/monolith``) calls the same model files in the same order. Every request carries a unique
text, so the encoder cache never hits but its cost (hashing, LRU insert) is paid: the hit count is
checked and reported. The same service with ``MODSHIP_TRACING=none`` is measured alongside, as an
extra. Before the load, both services must give the same labels and confidences for a few texts.

Note on tracing: inside ``bentoml serve`` modship's spans are children of BentoML's request span,
which BentoML does not sample by default (``tracing.sample_rate`` 0), and modship's tracer samples
parent-based: no span is recorded or exported, so the two composed variants differ only by the
cost of creating non-recording spans.

Goals, at every connection count: p50 composed/monolith <= 1.05, throughput >= 0.95.
"""

from __future__ import annotations

from typing import Any

import httpx

from bench import load, results, setup

TITLE = "composed system vs hand-written monolith (unique inputs: no cache hits)"
COMPOSED, NO_TRACING, MONOLITH = "composed", "composed, MODSHIP_TRACING=none", "monolith"
AGREE_TOLERANCE = 1e-4


def agreement(urls: dict[str, str], texts: tuple[str, ...]) -> dict[str, Any]:
    """The composed and the monolith answers for the same texts: labels equal, confidences close."""
    answers = {
        name: httpx.post(f"{url}/predict", json={"text": list(texts)}, timeout=60).raise_for_status().json()
        for name, url in urls.items()
    }
    a, b = (answers[n]["prediction"] for n in urls)
    diff = max(abs(x["confidence"] - y["confidence"]) for x, y in zip(a, b, strict=True))
    same = [x["label"] for x in a] == [y["label"] for y in b]
    if not same or diff > AGREE_TOLERANCE:
        raise AssertionError(f"composed and monolith disagree (same labels: {same}, max confidence diff {diff:.2g})")
    return {"texts": len(texts), "same_labels": same, "max_confidence_diff": diff}


def run(ws: setup.Workspace, cfg: load.Load) -> dict[str, Any]:
    composed_dir, monolith_dir = ws.system(ws.spec()), ws.monolith()
    servers = {
        COMPOSED: setup.Bento("composed", composed_dir, ws.scratch, MODSHIP_TRACING=None),
        NO_TRACING: setup.Bento("composed-no-tracing", composed_dir, ws.scratch, MODSHIP_TRACING="none"),
        MONOLITH: setup.Bento("monolith", monolith_dir, ws.scratch),
    }
    texts = load.bbc_texts(400)
    with setup.running(*servers.values()):
        agreed = agreement({COMPOSED: servers[COMPOSED].url, MONOLITH: servers[MONOLITH].url}, texts[::50])
        measured = load.side_by_side(
            {name: s.target() for name, s in servers.items()},
            load.Inputs(texts, unique=True),
            cfg,
            scratch=ws.scratch,
        )
        hits = sum(servers[n].counter("modship_step_cache_hits_total", step="encoder") for n in (COMPOSED, NO_TRACING))
    checks = []
    for c in cfg.connections:
        checks.append(
            results.Check(f"p50 composed/monolith c{c}", measured.paired(COMPOSED, MONOLITH, c, "p50_ms"), "<=", 1.05)
        )
        checks.append(
            results.Check(f"req/s composed/monolith c{c}", measured.paired(COMPOSED, MONOLITH, c, "rps"), ">=", 0.95)
        )

    def vs_monolith(name: str) -> dict[str, dict[str, float]]:
        return {
            f"c{c}": {m: round(measured.paired(name, MONOLITH, c, m), 4) for m in ("p50_ms", "rps", "cpu_ms")}
            for c in cfg.connections
        }

    cpu = {name: {c: vs_monolith(name)[f"c{c}"]["cpu_ms"] for c in cfg.connections} for name in (COMPOSED, NO_TRACING)}
    return results.result(
        title=TITLE,
        notes=[
            f"CPU per request vs the monolith: {name} " + ", ".join(f"c{c} {v:.3f}" for c, v in ratios.items())
            for name, ratios in cpu.items()
        ]
        + [f"encoder cache hits: {hits:g} (unique inputs); answers agree: {agreed['same_labels']}"],
        figures={COMPOSED: measured.figures(COMPOSED), NO_TRACING: measured.figures(NO_TRACING)},
        baseline={MONOLITH: measured.figures(MONOLITH)},
        checks=checks,
        goal="p50 composed/monolith <= 1.05 and throughput >= 0.95 of the monolith's, at every connection count",
        host=measured.foreign(),
        ratios={COMPOSED: vs_monolith(COMPOSED), NO_TRACING: vs_monolith(NO_TRACING)},
        encoder_cache_hits=hits,
        agreement=agreed,
    )
