"""(c) What the router costs: the composed Bento called directly, through the modship router, and
through nginx.

Two ``bentoml serve`` processes of the shipped ``topic-classifier`` stand for stable and canary.
Targets, all measured side by side with unique inputs (no cache hits):

- ``direct``: stable alone, no proxy;
- ``modship router 100/0``: a router sending everything to stable: the same single backend as
  ``direct``, so the difference is the router's own cost;
- ``modship router 80/20`` and ``nginx 80/20`` (``weight=80``/``weight=20``, one worker, keep-alive
  to the upstreams): the load spread over both processes. With several connections they have a
  second server process behind them that ``direct`` lacks, so their throughput beyond one
  connection measures capacity as well as proxy cost. Even with one connection, alternating
  between two processes seems to cost latency of its own (colder caches), proxy or not.

The share each split sent to the canary is read from the two Bentos' request counters.

Goals: router throughput >= 0.9 of direct, checked for the 80/20 router with one connection (where
the second backend cannot help) and for the 100/0 router at every connection count (same capacity
as direct).

Added latency <= 0.5 ms at every split and connection count, measured with every input sent
through every target in turn (``bench/interleave.py``): in runs of a few seconds one after the
other, a p50 moves by a millisecond or more between two runs of the same target here, more than
what is measured. The 100/0 router is checked against ``direct``; the 80/20 router against
``client split 80/20``, a client splitting by itself (alternating between two processes costs
latency of its own). For this the 80/20 router splits by a sticky key that every input carries,
and the client computes the same bucket, so both send each input to the same backend. The check
takes the median over rounds of how much longer a round's requests took through the proxy (at one
connection, a round is one input), with a 95 % interval; the difference of the two p50s is
reported beside it.

It is measured three times, with the same proxies (routers reconfigured, another nginx and floor each):
- behind the two Bentos, checked at one connection. With four at once, the Bento's answers to the
  same four inputs spread by several milliseconds from round to round (its threads, the shared
  cores), so even over 250 rounds the median is known to about +-0.6 ms only: reported with its
  interval, not checked;
- behind two fixed-cost upstreams that wait ``FIXED_MS`` off the CPU per answer, one request at a
  time (``tests.support.upstream --hold-ms``: a single-worker model on an accelerator or on cores of
  its own, every answer alike), checked at every connection count: the intervals are a few
  hundredths of a millisecond, and what is left is the proxy;
- behind the same upstreams burning ``FIXED_MS`` of CPU instead (``--busy-ms``), checked at one
  connection and reported at four: with four requests queued, the two upstreams keep both of this
  machine's cores busy in the rounds that reach the canary, so the router, the client and the
  upstreams wait for each other's cores, and every proxy, the relay floor included, measures from
  round to round a spread of about +-1 ms (intervals about +-0.1 ms) that belongs to the machine.

The router's own CPU per request (its process, from ``/proc``) must stay within 1.5x of nginx's
doing the same 80/20 split, at every connection count: CPU per request hardly depends on how busy
the shared machine is, so this is the robust figure.

A reference beside them, ``python relay floor`` (``bench/relay_floor.py``): a uvloop proxy that
only relays bytes between a client and stable, framed by httptools, with none of the router's
features. Its CPU per request is what a proxy written in Python on this event loop costs at least;
the notes state it against nginx's, to say how far the 1.5x goal is reachable in Python at all.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bench import interleave, load, results, setup

TITLE = "direct vs modship router vs nginx (two instances of the Bento, unique inputs)"
DIRECT, SINGLE, SPLIT, NGINX = "direct", "modship router 100/0", "modship router 80/20", "nginx 80/20"
FLOOR = "python relay floor"
CLIENT_SPLIT = "client split 80/20"
WEIGHT = 20
FIXED_MS = 20.0  # the fixed-cost upstreams' time per answer: about what the Bento takes here
BENTOS, HELD, SPUN = "bentos", "fixed_off_cpu", "fixed_on_cpu"  # the sets of upstreams latency is measured behind
UPSTREAMS = {
    BENTOS: "behind the Bentos",
    HELD: f"behind fixed-cost upstreams ({FIXED_MS:g} ms off the CPU each)",
    SPUN: f"behind fixed-cost upstreams ({FIXED_MS:g} ms of CPU each)",
}
EVERY_COUNT = (HELD,)  # added latency checked at every connection count; behind the others at the lowest
Interleaved = dict[int, dict[str, list[float]]]  # connections -> target -> ms per request, in rounds


def run(ws: setup.Workspace, cfg: load.Load) -> dict[str, Any]:
    bento_dir = ws.system(ws.spec())
    stable = setup.Bento("stable", bento_dir, ws.scratch, MODSHIP_TRACING=None)
    canary = setup.Bento("canary", bento_dir, ws.scratch, MODSHIP_TRACING=None)
    single = setup.Router("router-single", "topic-classifier", ws.scratch)
    split = setup.Router("router-split", "topic-classifier", ws.scratch)
    nginx = setup.Nginx("nginx", stable.url, canary.url, WEIGHT, ws.scratch)
    floor = setup.RelayFloor("relay-floor", stable.port, ws.scratch)
    # the same proxies in front of fixed-cost upstreams, off the CPU and on it
    fixed: dict[str, tuple[setup.Process, ...]] = {}
    for where, tag in ((HELD, "held"), (SPUN, "spun")):
        up = setup.FixedCost(f"{tag}-stable", FIXED_MS, ws.scratch, on_cpu=where == SPUN)
        down = setup.FixedCost(f"{tag}-canary", FIXED_MS, ws.scratch, on_cpu=where == SPUN)
        ng = setup.Nginx(f"nginx-{tag}", up.url, down.url, WEIGHT, ws.scratch)
        fixed[where] = (up, down, ng, setup.RelayFloor(f"relay-floor-{tag}", up.port, ws.scratch))
    served = {SPLIT: [0.0, 0.0], NGINX: [0.0, 0.0]}  # requests answered by stable, canary

    def counts() -> list[float]:
        return [b.counter("modship_requests_total") for b in (stable, canary)]

    def observe(target: str, connections: int) -> Any:
        if target not in served:
            return None
        before = counts()

        def done(_: load.Sample) -> None:
            for i, n in enumerate(counts()):
                served[target][i] += n - before[i]

        return done

    def latencies(up: setup.Process, down: setup.Process, ng: setup.Process, fl: setup.Process) -> Interleaved:
        """Every input through every target, at every connection count: the 80/20 router splits by
        the input's key, so the client's own split (the baseline) sends every input where it does."""
        single.configure(up.url)
        split.configure(up.url, down.url, WEIGHT, sticky=interleave.KEY)
        w = WEIGHT / 100
        targets = {
            DIRECT: interleave.Split((up.port,)),
            CLIENT_SPLIT: interleave.Split((up.port, down.port), (1 - w, w), keyed=True),
            SINGLE: interleave.Split((single.port,)),
            SPLIT: interleave.Split((split.port,)),
            NGINX: interleave.Split((ng.port,)),
            FLOOR: interleave.Split((fl.port,)),
        }
        inputs = load.Inputs(load.bbc_texts(400), unique=True)
        # several requests at once: half as many rounds (each takes longer), twice as many requests
        rounds = {c: cfg.interleaved // min(c, 2) for c in cfg.connections}
        return {c: interleave.latencies(targets, inputs, rounds[c], connections=c) for c in cfg.connections}

    with setup.running(stable, canary, single, split, nginx, floor, *(p for ps in fixed.values() for p in ps)):
        single.configure(stable.url)
        split.configure(stable.url, canary.url, WEIGHT)
        measured = load.side_by_side(
            {
                DIRECT: stable.target(),
                SINGLE: single.target(stable),
                SPLIT: split.target(stable, canary),
                NGINX: nginx.target(stable, canary),
                FLOOR: floor.target(stable),
            },
            load.Inputs(load.bbc_texts(400), unique=True),
            cfg,
            scratch=ws.scratch,
            observe=observe,
        )
        share = {name: round(s[1] / (s[0] + s[1]), 4) if sum(s) else None for name, s in served.items()}
        lat = {BENTOS: latencies(stable, canary, nginx, floor), **{w: latencies(*ps) for w, ps in fixed.items()}}
    return report(measured, cfg, share, lat)


def report(
    measured: load.Measured, cfg: load.Load, share: dict[str, float | None], lat: dict[str, Interleaved]
) -> dict[str, Any]:
    proxies = (SINGLE, SPLIT, NGINX)

    def proxy_cpu(name: str, c: int) -> float:
        return float(measured.figures(name)[f"c{c}"]["entry_cpu_ms_per_req"])

    def service_cpu(c: int) -> float:
        return float(measured.figures(DIRECT)[f"c{c}"]["cpu_ms_per_req"])

    low = min(cfg.connections)
    vs_direct = {
        name: {
            f"c{c}": {
                "rps_ratio": round(measured.paired(name, DIRECT, c, "rps"), 4),
                "added_p50_ms": round(measured.paired(name, DIRECT, c, "p50_ms", diff=True), 3),
                "added_p99_ms": round(measured.paired(name, DIRECT, c, "p99_ms", diff=True), 3),
                "proxy_cpu_ms_per_req": proxy_cpu(name, c),
                # the throughput ratio when CPU is the limit: direct's cost over direct's plus the proxy's
                "cpu_bound_rps_ratio": round(service_cpu(c) / (service_cpu(c) + proxy_cpu(name, c)), 4),
            }
            for c in cfg.connections
        }
        for name in proxies
    }
    notes = [
        f"{name}: proxy CPU {v[f'c{low}']['proxy_cpu_ms_per_req']:.3f} ms/req, throughput when CPU-bound"
        f" {v[f'c{low}']['cpu_bound_rps_ratio']:.3f} of direct, added p50 c{low} {v[f'c{low}']['added_p50_ms']:+.2f} ms"
        + (f", canary share {share[name]}" if name in share else "")
        for name, v in vs_direct.items()
    ]
    floor = {f"c{c}": round(results.ratio(proxy_cpu(FLOOR, c), proxy_cpu(NGINX, c)), 3) for c in cfg.connections}
    notes.append(
        f"{FLOOR} (bytes relayed, httptools framing, no features): proxy CPU {proxy_cpu(FLOOR, low):.3f} ms/req,"
        f" {floor[f'c{low}']:.2f}x nginx's at c{low}; the router is at"
        f" {results.ratio(proxy_cpu(SPLIT, low), proxy_cpu(NGINX, low)):.2f}x"
    )
    # latency, every input through every target: what each proxy adds to the same traffic without it
    pairs = ((SINGLE, DIRECT), (SPLIT, CLIENT_SPLIT), (NGINX, CLIENT_SPLIT), (FLOOR, DIRECT), (CLIENT_SPLIT, DIRECT))
    adds = {
        where: {c: [interleave.added(ms, t, b, connections=c) for t, b in pairs] for c, ms in by_c.items()}
        for where, by_c in lat.items()
    }
    notes += [
        f"interleaved, {UPSTREAMS[where]}, c{c} ({len(lat[where][c][DIRECT]) // c} rounds): {a.target} adds"
        f" {a.paired_ms:+.3f} ms (95 % {a.low_ms:+.3f} to {a.high_ms:+.3f}) to {a.baseline};"
        f" difference of p50s {a.p50_ms:+.3f} ms"
        for where, by_c in adds.items()
        for c, row in by_c.items()
        for a in row
    ]
    checks = [
        results.Check(f"req/s 80/20/direct c{low}", measured.paired(SPLIT, DIRECT, low, "rps"), ">=", 0.9),
        *(
            results.Check(f"req/s 100/0/direct c{c}", measured.paired(SINGLE, DIRECT, c, "rps"), ">=", 0.9)
            for c in cfg.connections
        ),
        *(
            results.Check(f"added ms {name} c{c} {where} (median per round, vs {baseline})", a.paired_ms, "<=", 0.5)
            for where, by_c in adds.items()
            for c, row in by_c.items()
            if c == low or where in EVERY_COUNT
            for a, name, baseline in ((row[0], "100/0", "direct"), (row[1], "80/20", "the client's own split"))
        ),
        *(
            results.Check(
                f"proxy CPU/req 80/20 router/nginx c{c}",
                results.ratio(proxy_cpu(SPLIT, c), proxy_cpu(NGINX, c)),
                "<=",
                1.5,
            )
            for c in cfg.connections
        ),
    ]
    return results.result(
        title=TITLE,
        notes=notes,
        figures={name: measured.figures(name) for name in proxies},
        baseline={DIRECT: measured.figures(DIRECT), FLOOR: measured.figures(FLOOR)},
        checks=checks,
        goal=(
            f"modship router >= 0.9 of direct throughput (80/20 split at {low} connection(s); 100/0 at every"
            " connection count); <= 0.5 ms added latency, inputs interleaved (100/0 against direct, 80/20 against"
            f" a client splitting by itself): behind the Bentos and CPU-bound fixed-cost upstreams at {low}"
            " connection(s), behind fixed-cost upstreams waiting off the CPU at every connection count; router"
            " CPU per request <= 1.5x nginx's (80/20)"
        ),
        host=measured.foreign(),
        vs_direct=vs_direct,
        interleaved={
            where: {
                f"c{c}": {
                    "rounds": len(ms[DIRECT]) // c,
                    "figures": interleave.figures(ms),
                    "added": [dataclasses.asdict(a) for a in adds[where][c]],
                }
                for c, ms in by_c.items()
            }
            for where, by_c in lat.items()
        },
        canary_share=share,
        floor_cpu_vs_nginx=floor,
    )
