"""``make bench``: run the benchmarks side by side and write ``bench/results.json``.

    python -m bench                      # every benchmark
    python -m bench composed router      # some, by name (other entries of results.json are kept)
    python -m bench --duration 15 --runs 5 --connections 1,4

Methodology. Every benchmark compares the thing under test with a baseline measured in the same
invocation on the same machine, against real processes on loopback (``bentoml serve``, the modship
router, nginx). Load comes from wrk (one thread, a fixed number of connections, a Lua script
POSTing JSON bodies built from a list of BBC News texts; see ``bench/load.py``). Each target is
warmed up first, then gets ``--runs`` runs of ``--duration`` seconds per connection count; runs
are interleaved round-robin (A B C, B C A, C A B, ...) so that drifts of the shared machine hit
every target alike. A figure is the median over runs of each run's p50, p99 and throughput (the
min-max range of throughput shows the noise); a check compares two targets round by round and
takes the median of those paired ratios. Many short interleaved runs beat a few long ones here:
the load from other programs comes and goes within seconds.

On two shared cores timings move by several percent from run to run and far more when other
programs are busy, so ratios are what counts, not absolute numbers. Around every run the CPU time
of the processes under test (from ``/proc``) is read too: CPU per request hardly depends on how busy
the machine is, so it backs up the timing ratios (``bench/host.py``). The cores other programs kept
busy are recorded per benchmark (``host``); above a quarter of a core the table flags the timings
as unreliable. The load generator, the proxies and the services share the same two cores, as on a
small node.

Result format: see ``bench/results.py``. A benchmark that fails is recorded with its error and the
command exits 1; goals not met are reported (``"met": false``) but do not fail the command.
Fixtures (registry, Bentos, processes) are in ``bench/setup.py``; the registry and Bentos are
cached under ``$MODSHIP_CACHE/bench``, logs go to a scratch directory kept on failure or ``--keep``.

To add a benchmark: a module with ``run(ws: setup.Workspace, cfg: load.Load) -> dict`` returning
``results.result(...)``, listed in ``BENCHMARKS`` below.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from bench import (
    argo,
    batching,
    cache,
    composed,
    dashboard,
    digits,
    instructions,
    isolation,
    k8s_operator,
    kind,
    load,
    results,
    rollback,
    router,
    setup,
    soak,
)

Benchmark = Callable[[setup.Workspace, load.Load], dict[str, Any]]

# name -> run function, in the order `python -m bench` runs them
BENCHMARKS: dict[str, Benchmark] = {
    "composed": composed.run,
    "cache-floor": cache.run,
    "batching": batching.run,
    "digits": digits.run,
    "router": router.run,
    "instructions": instructions.run,
    "rollback": rollback.run,
    "kind": kind.run,
    "isolation": isolation.run,
    "operator": lambda ws, cfg: k8s_operator.run(),
    "argo": lambda ws, cfg: argo.run(),
    "soak": soak.run,
    "dashboard": dashboard.run,
}
RESULTS = Path(__file__).resolve().parent / "results.json"
TOOLS = {"wrk": "wrk", "nginx": "nginx", "chromium": "chromium"}  # binary -> Debian package


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})"
    )
    p.add_argument("--duration", type=float, default=4.0, help="seconds per measured run (default: 4)")
    p.add_argument("--runs", type=int, default=5, help="runs per target and connection count (default: 5)")
    p.add_argument("--connections", default="1,4", help="comma-separated connection counts (default: 1,4)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per target (default: 2)")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"results file (default: {RESULTS})")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, configs)")
    return p


def _terminate(signum: int, frame: FrameType | None) -> None:
    setup.stop_all()
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser().error(f"unknown benchmark {unknown[0]!r} (known: {', '.join(BENCHMARKS)})")
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        print(f"error: missing {', '.join(missing)}: apt-get install -y --no-install-recommends {' '.join(missing)}")
        return 2
    cfg = load.Load(
        duration=args.duration,
        runs=args.runs,
        connections=tuple(int(c) for c in args.connections.split(",")),
        warmup=args.warmup,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _terminate)
    scratch = Path(tempfile.mkdtemp(prefix="modship-bench-"))
    started = time.monotonic()
    done: dict[str, dict[str, Any]] = {}
    failed = False
    try:
        print(f"preparing the registry and Bentos (cache: {setup.cache_root()})", flush=True)
        ws = setup.Workspace(scratch)
        for name in names:
            print(f"\n== {name}", flush=True)
            t0 = time.monotonic()
            try:
                r = BENCHMARKS[name](ws, cfg)
            except Exception as exc:
                traceback.print_exc()
                r = {"error": f"{type(exc).__name__}: {exc}", "met": False}
                failed = True
            r["seconds"] = round(time.monotonic() - t0, 1)
            r["load"] = {"duration_s": cfg.duration, "runs": cfg.runs, "connections": list(cfg.connections)}
            r["when"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            done[name] = r
    finally:
        write(args.out, done)
        if failed or args.keep:
            print(f"\nlogs and configs kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print(results.render(done))
    print(f"\nwrote {args.out} in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


def write(path: Path, done: dict[str, dict[str, Any]]) -> None:
    """Merge into the results file: benchmarks not run this time keep their last entry."""
    old: dict[str, Any] = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
    merged = {**old, **done}
    ordered = {n: merged[n] for n in BENCHMARKS if n in merged} | {
        n: v for n, v in merged.items() if n not in BENCHMARKS
    }
    path.write_text(json.dumps(ordered, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
