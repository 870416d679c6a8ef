"""(d) What adaptive batching buys: the shipped ``topic-classifier`` (its encoder is ``batchable``, so
concurrent requests share model calls, see ``controller/pipeline/batching.py``) against the same
system with ``batching: {enabled: false}`` on the encoder step (a variant revision), both at 16
concurrent clients, and against the same pipeline run in-process on batches of 32 texts (no HTTP,
no metrics or traces, one thread: the practical ceiling of these models on this machine).

Every request carries a unique text (no step cache hits). The in-process figure is measured in this
process between the HTTP rounds (one run of ``--duration`` seconds before each round), in texts/s;
one HTTP request carries one text, so req/s and texts/s compare directly.

Goals at 16 connections: throughput batched/unbatched >= 1.5 and batched/in-process >= 0.7; p99
of both services is reported beside.
"""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import load, results, setup
from controller.pipeline import kernels, serving
from controller.pipeline.engine import Pipeline, module_dir

TITLE = "adaptive batching at 16 clients vs unbatched, and vs in-process batches of 32"
BATCHED, UNBATCHED, IN_PROCESS = "batched", "batching off", "in-process, batches of 32"
CONNECTIONS = 16
BATCH = 32


def unbatched(doc: dict[str, Any]) -> dict[str, Any]:
    for step in doc["spec"]["steps"]:
        if step["name"] == "encoder":
            step["batching"] = {"enabled": False}
    return doc


def in_process(bento_dir: Path, texts: tuple[str, ...], seconds: float) -> float:
    """Texts/s of the revision's pipeline on batches of ``BATCH`` unique texts, for ``seconds``."""
    bundle = bento_dir / "src"
    pipeline = Pipeline.load(serving.read_lock(bundle), bundle / serving.MODULES_DIR, verify=False)
    nonce = uuid.uuid4().hex[:8]
    n = 0

    def batch() -> list[str]:
        nonlocal n
        out = []
        for _ in range(BATCH):
            n += 1
            out.append(f"[{nonce}-{n}] {texts[n % len(texts)]}")
        return out

    pipeline.predict({"text": batch()})  # warm-up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pipeline.predict({"text": batch()})
        done += BATCH
    rate = done / (time.perf_counter() - t0)
    pipeline.close()
    return rate


def encoder_profile(bento_dir: Path, texts: tuple[str, ...], rows: int = 96) -> dict[str, float]:
    """CPU ms per text of the encoder kernel alone (no batcher, this process) by batch size: what a
    shared model call can save at most. CPU time, so other programs on the machine hardly matter."""
    bundle = bento_dir / "src"
    lock = serving.read_lock(bundle)
    ref = lock.system.spec.step("encoder").module  # pinned in the lock
    kernel = kernels.load(module_dir(bundle / serving.MODULES_DIR, ref), lock.module(ref).manifest)
    kernel({"text": list(texts[:4])})  # warm-up
    out = {}
    for size in (1, 4, 8, 16, 32):
        done, c0, i = 0, time.process_time(), 0
        while done < rows:
            kernel({"text": [f"[p{size}-{i}-{j}] {texts[(i * size + j) % len(texts)]}" for j in range(size)]})
            done, i = done + size, i + 1
        out[str(size)] = round((time.process_time() - c0) * 1000 / done, 2)
    return out


def run(ws: setup.Workspace, cfg: load.Load) -> dict[str, Any]:
    on_dir, off_dir = ws.system(ws.spec()), ws.system(unbatched(ws.spec()))
    servers = {
        BATCHED: setup.Bento("batched", on_dir, ws.scratch, MODSHIP_TRACING=None),
        UNBATCHED: setup.Bento("unbatched", off_dir, ws.scratch, MODSHIP_TRACING=None),
    }
    texts = load.bbc_texts(400)
    profile = encoder_profile(on_dir, texts)
    print(f"    encoder CPU ms/text by batch size: {profile}", flush=True)
    local: list[float] = []
    at16 = replace(cfg, connections=(CONNECTIONS,))

    def observe(target: str, connections: int) -> Any:
        if target == BATCHED:  # once per round, beside the HTTP runs
            local.append(in_process(on_dir, texts, cfg.duration))
            print(f"    {IN_PROCESS:<30} {local[-1]:7.1f} texts/s", flush=True)
        return None

    with setup.running(*servers.values()):
        measured = load.side_by_side(
            {name: s.target() for name, s in servers.items()},
            load.Inputs(texts, unique=True),
            at16,
            scratch=ws.scratch,
            observe=observe,
        )
        hits = servers[BATCHED].counter("modship_step_cache_hits_total", step="encoder")
    ceiling = statistics.median(local)
    c = CONNECTIONS
    # What batching can give at most here: the unbatched service's CPU per request over the encoder's
    # cheapest CPU per text at any batch size (a batch saves what the encoder saves, and at best all
    # of the rest of the request). With two cores busy both ways, throughput follows CPU per request.
    unbatched_cpu = statistics.median(s.cpu_ms for s in measured.samples[(UNBATCHED, c)])
    bound = unbatched_cpu / min(profile.values())
    batched_rps = [s.rps for s in measured.samples[(BATCHED, c)]]
    vs_local = statistics.median(batched_rps) / ceiling
    checks = [
        results.Check(f"req/s batched/unbatched c{c}", measured.paired(BATCHED, UNBATCHED, c, "rps"), ">=", 1.5),
        results.Check(f"req/s batched/in-process c{c}", vs_local, ">=", 0.7),
    ]
    figs = measured.figures(BATCHED)[f"c{c}"]
    base = measured.figures(UNBATCHED)[f"c{c}"]
    return results.result(
        title=TITLE,
        notes=[
            f"p99 at {c} connections: batched {figs['p99_ms']:.1f} ms, batching off {base['p99_ms']:.1f} ms",
            f"in-process ceiling: {ceiling:.1f} texts/s (median of {len(local)} runs of {cfg.duration:g} s,"
            f" range {min(local):.1f}-{max(local):.1f})",
            f"CPU per request batched/unbatched: {measured.paired(BATCHED, UNBATCHED, c, 'cpu_ms'):.3f};"
            f" encoder cache hits {hits:g} (unique inputs)",
            "encoder kernel alone, CPU ms per text by batch size: "
            + ", ".join(f"{k}: {v:g}" for k, v in profile.items()),
            f"upper bound of batched/unbatched on this machine: {bound:.2f} (unbatched {unbatched_cpu:.1f} CPU ms"
            f" per request / the encoder's cheapest {min(profile.values()):.1f} CPU ms per text, even if batching"
            " removed every other cost of a request)",
        ],
        figures={BATCHED: measured.figures(BATCHED)},
        baseline={UNBATCHED: measured.figures(UNBATCHED), IN_PROCESS: {"texts_per_s": round(ceiling, 1)}},
        checks=checks,
        goal=f"at {c} connections: throughput batched >= 1.5x batching off, and >= 0.7x in-process batches of {BATCH}",
        host=measured.foreign(),
        in_process_texts_per_s=[round(x, 1) for x in local],
        encoder_cpu_ms_per_text_by_batch=profile,
        p99_ms={BATCHED: figs["p99_ms"], UNBATCHED: base["p99_ms"]},
        bound_batched_over_unbatched=round(bound, 3),
    )
