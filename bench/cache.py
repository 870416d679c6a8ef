"""(b) What the step cache buys: the shipped ``topic-classifier`` (encoder cached) against the same
system without ``cache:`` (a variant revision), both as shipped otherwise (tracing included).

The load repeats 64 texts, each sent once beforehand, so every encoder lookup of the cached system
hits; the hit ratio during the measured runs is read from its ``/metrics`` and reported.

Goal, at every connection count: p50 uncached/cached >= 10 and throughput cached/uncached >= 10.
"""

from __future__ import annotations

from typing import Any

import httpx

from bench import load, results, setup

TITLE = "step cache on repeated inputs vs the same system without cache"
CACHED, UNCACHED = "cached", "no cache"


def uncached(doc: dict[str, Any]) -> dict[str, Any]:
    for step in doc["spec"]["steps"]:
        step.pop("cache", None)
    return doc


def run(ws: setup.Workspace, cfg: load.Load) -> dict[str, Any]:
    servers = {
        CACHED: setup.Bento("cached", ws.system(ws.spec()), ws.scratch, MODSHIP_TRACING=None),
        UNCACHED: setup.Bento("uncached", ws.system(uncached(ws.spec())), ws.scratch, MODSHIP_TRACING=None),
    }
    counts = {"hits": 0.0, "misses": 0.0}

    def observe(target: str, connections: int) -> Any:
        if target != CACHED:
            return None

        def read() -> tuple[float, float]:
            s = servers[CACHED]
            return (
                s.counter("modship_step_cache_hits_total", step="encoder"),
                s.counter("modship_step_cache_misses_total", step="encoder"),
            )

        before = read()

        def done(_: load.Sample) -> None:
            after = read()
            counts["hits"] += after[0] - before[0]
            counts["misses"] += after[1] - before[1]

        return done

    texts = load.bbc_texts(64)
    with setup.running(*servers.values()):
        for text in texts:  # fill the cache: every measured request is a hit
            httpx.post(f"{servers[CACHED].url}/predict", json={"text": text}, timeout=60).raise_for_status()
        measured = load.side_by_side(
            {name: s.target() for name, s in servers.items()},
            load.Inputs(texts, unique=False),
            cfg,
            scratch=ws.scratch,
            observe=observe,
        )
    checks = []
    for c in cfg.connections:
        checks.append(results.Check(f"p50 speed-up c{c}", measured.paired(UNCACHED, CACHED, c, "p50_ms"), ">=", 10))
        checks.append(
            results.Check(f"req/s cached/uncached c{c}", measured.paired(CACHED, UNCACHED, c, "rps"), ">=", 10)
        )
    total = counts["hits"] + counts["misses"]
    cpu = {f"c{c}": round(measured.paired(UNCACHED, CACHED, c, "cpu_ms"), 2) for c in cfg.connections}
    hit_ratio = round(counts["hits"] / total, 4) if total else None
    return results.result(
        title=TITLE,
        notes=[
            f"encoder cache hit ratio during the runs: {hit_ratio}; CPU per request uncached/cached: "
            + ", ".join(f"{c} {v:g}" for c, v in cpu.items())
        ],
        figures={CACHED: measured.figures(CACHED)},
        baseline={UNCACHED: measured.figures(UNCACHED)},
        checks=checks,
        goal="cached >= 10x faster: p50 uncached/cached and throughput cached/uncached, at every connection count",
        host=measured.foreign(),
        cpu_per_request_uncached_over_cached=cpu,
        hit_ratio=hit_ratio,
    )
