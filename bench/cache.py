"""(b) Cache hits close to the floor: a request answered by the response cache against a no-op route
of the same service, and (the old figure, as an extra) against the same system without any cache.

The system under test is the shipped ``topic-classifier`` with a response cache (``spec.cache``, a
variant revision): a hit is answered in the HTTP handler before any thread hop or step. The floor is
``POST /noop`` of the same process, which reads and parses the same JSON body and answers a small
JSON object: what BentoML's and Starlette's HTTP stack costs. The load repeats 64 texts, each sent
once beforehand, so every measured ``/predict`` is a hit; the hit ratio during the measured runs is
read from ``/metrics`` and reported. The uncached system (no step cache, no response cache) is
measured alongside for the old "cached >= 10x faster" figure, which is not a goal any more: it
depends on how slow the models are on the machine.

Goal, at every connection count: p50 of a hit / p50 of ``/noop`` <= 1.3.
"""

from __future__ import annotations

from typing import Any

import httpx

from bench import load, results, setup

TITLE = "response cache hits vs a no-op route of the same service"
HIT, NOOP, UNCACHED = "cache hit (/predict)", "no-op route (/noop)", "no cache (/predict)"
RESPONSE_CACHE = {"maxEntries": 20000, "ttlSeconds": 3600}


def response_cached(doc: dict[str, Any]) -> dict[str, Any]:
    doc["spec"]["cache"] = dict(RESPONSE_CACHE)
    return doc


def uncached(doc: dict[str, Any]) -> dict[str, Any]:
    for step in doc["spec"]["steps"]:
        step.pop("cache", None)
    doc["spec"].pop("cache", None)
    return doc


def run(ws: setup.Workspace, cfg: load.Load) -> dict[str, Any]:
    cached = setup.Bento("cached", ws.system(response_cached(ws.spec())), ws.scratch, MODSHIP_TRACING=None)
    plain = setup.Bento("uncached", ws.system(uncached(ws.spec())), ws.scratch, MODSHIP_TRACING=None)
    counts = {"hits": 0.0, "misses": 0.0}

    def read() -> tuple[float, float]:
        return (
            cached.counter("modship_response_cache_hits_total"),
            cached.counter("modship_response_cache_misses_total"),
        )

    def observe(target: str, connections: int) -> Any:
        if target != HIT:
            return None
        before = read()

        def done(_: load.Sample) -> None:
            after = read()
            counts["hits"] += after[0] - before[0]
            counts["misses"] += after[1] - before[1]

        return done

    texts = load.bbc_texts(64)
    with setup.running(cached, plain):
        for text in texts:  # fill the cache: every measured request is a hit
            r = httpx.post(f"{cached.url}/predict", json={"text": text}, timeout=60).raise_for_status()
            assert r.headers["x-modship-cache"] == "miss", r.headers
        again = httpx.post(f"{cached.url}/predict", json={"text": texts[0]}, timeout=60).raise_for_status()
        assert again.headers["x-modship-cache"] == "hit" and again.json()["meta"]["responseCache"] is True
        noop = cached.target()
        measured = load.side_by_side(
            {HIT: cached.target(), NOOP: load.Target(noop.url, noop.pids, "/noop"), UNCACHED: plain.target()},
            load.Inputs(texts, unique=False),
            cfg,
            scratch=ws.scratch,
            observe=observe,
        )
    checks = [
        results.Check(f"p50 hit/noop c{c}", measured.paired(HIT, NOOP, c, "p50_ms"), "<=", 1.3) for c in cfg.connections
    ]
    total = counts["hits"] + counts["misses"]
    hit_ratio = round(counts["hits"] / total, 4) if total else None
    old = {
        f"c{c}": {
            "p50_uncached_over_hit": round(measured.paired(UNCACHED, HIT, c, "p50_ms"), 2),
            "rps_hit_over_uncached": round(measured.paired(HIT, UNCACHED, c, "rps"), 2),
        }
        for c in cfg.connections
    }
    added = {f"c{c}": round(measured.paired(HIT, NOOP, c, "p50_ms", diff=True), 3) for c in cfg.connections}
    return results.result(
        title=TITLE,
        notes=[
            f"response cache hit ratio during the runs: {hit_ratio}",
            "p50 added by a hit over /noop (ms): " + ", ".join(f"{c} {v:g}" for c, v in added.items()),
            "old figure, hit vs no cache (p50 speed-up, throughput ratio): "
            + ", ".join(
                f"{c} {o['p50_uncached_over_hit']:g}x, {o['rps_hit_over_uncached']:g}x" for c, o in old.items()
            ),
        ],
        figures={HIT: measured.figures(HIT)},
        baseline={NOOP: measured.figures(NOOP), UNCACHED: measured.figures(UNCACHED)},
        checks=checks,
        goal="p50 of a response cache hit <= 1.3x that of /noop on the same service, at every connection count",
        host=measured.foreign(),
        hit_ratio=hit_ratio,
        added_p50_ms=added,
        hit_vs_uncached=old,
    )
