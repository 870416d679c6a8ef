"""A load generator for the demo: steady traffic of real news headlines against a router.

    python examples/loadgen.py --url http://127.0.0.1:8080 --rate 40 [--duration 60] [--report FILE]

Sends ``--rate`` requests per second (``--concurrency`` in flight at most), each a text from the
BBC News test split (or one of the JSON request bodies listed in ``--bodies FILE``), and counts
answers by status and by the revision that answered. SIGTERM or SIGINT stops it; the report (JSON)
is written every second and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import time
from collections import Counter
from pathlib import Path

import httpx


def texts() -> list[str]:
    try:
        from examples.build_modules import load_bbc

        data, _ = load_bbc()
        return data
    except Exception:  # the corpus package is missing: fall back to a few sentences
        return ["Shares rose after strong profits.", "The striker scored twice.", "The budget was unveiled."]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--rate", type=float, default=40.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--duration", type=float, default=0.0, help="seconds (0: until stopped)")
    ap.add_argument("--report", type=Path)
    ap.add_argument("--bodies", type=Path, help="a JSON list of request bodies to send instead of texts")
    args = ap.parse_args()
    pool = json.loads(args.bodies.read_text()) if args.bodies else [{"text": t} for t in texts()]
    rng = random.Random(7)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    codes: Counter[str] = Counter()
    by_rev: Counter[str] = Counter()
    failures: list[str] = []
    sem = asyncio.Semaphore(args.concurrency)
    started = time.monotonic()

    async def one(client: httpx.AsyncClient) -> None:
        async with sem:
            try:
                r = await client.post(
                    "/predict", json=rng.choice(pool), headers={"x-user-id": str(rng.randrange(10_000))}
                )
                codes[str(r.status_code)] += 1
                by_rev[r.headers.get("x-modship-revision", "?")] += 1
                if r.status_code >= 500:
                    failures.append(f"{time.strftime('%H:%M:%S')} {r.status_code} {r.text[:160]}")
            except httpx.HTTPError as exc:
                codes["error"] += 1
                failures.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}")

    def report() -> None:
        if args.report:
            total = sum(codes.values())
            failed = sum(v for k, v in codes.items() if k == "error" or k.startswith("5"))
            data = {
                "requests": total,
                "failed": failed,
                "codes": dict(codes),
                "byRevision": dict(by_rev),
                "seconds": round(time.monotonic() - started, 1),
                "lastFailures": failures[-5:],
            }
            tmp = args.report.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(args.report)

    async with httpx.AsyncClient(base_url=args.url, timeout=30) as client:
        tasks: set[asyncio.Task[None]] = set()
        interval, nxt, last_report = 1.0 / args.rate, time.monotonic(), 0.0
        while not stop.is_set() and (not args.duration or time.monotonic() - started < args.duration):
            t = asyncio.create_task(one(client))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            nxt += interval
            if time.monotonic() - last_report > 1.0:
                report()
                last_report = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, nxt - time.monotonic()))
        await asyncio.gather(*tasks, return_exceptions=True)
    report()


if __name__ == "__main__":
    asyncio.run(main())
