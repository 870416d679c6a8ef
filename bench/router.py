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
as direct). Added p50 <= 0.5 ms, checked at one connection where every input goes through every
target in turn (``bench/interleave.py``): in runs of a few seconds one after the other, a p50 moves
by a millisecond or more between two runs of the same target here, more than what is measured. The
100/0 router is checked against ``direct``; the 80/20 router against ``client split 80/20``, a
client drawing stable or canary itself per request (the same split without a proxy: alternating
between two processes costs latency of its own). The check takes the median over inputs of what
each one took longer through the proxy (each input went through both back to back): the added
latency of a typical request, estimated without the spread that the inputs themselves bring (texts
of different lengths). The difference of the two p50s measures the same shift but moves by a few
tenths of a millisecond between runs even so; it is reported beside it, and so are the run-by-run
p50 differences (``vs_direct``), at every connection count.

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


def run(ws: setup.Workspace, cfg: load.Load) -> dict[str, Any]:
    bento_dir = ws.system(ws.spec())
    stable = setup.Bento("stable", bento_dir, ws.scratch, MODSHIP_TRACING=None)
    canary = setup.Bento("canary", bento_dir, ws.scratch, MODSHIP_TRACING=None)
    single = setup.Router("router-single", "topic-classifier", ws.scratch)
    split = setup.Router("router-split", "topic-classifier", ws.scratch)
    nginx = setup.Nginx("nginx", stable.url, canary.url, WEIGHT, ws.scratch)
    floor = setup.RelayFloor("relay-floor", stable.port, ws.scratch)
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

    with setup.running(stable, canary, single, split, nginx, floor):
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
        w = WEIGHT / 100
        lat = interleave.latencies(
            {
                DIRECT: interleave.Split((stable.port,)),
                CLIENT_SPLIT: interleave.Split((stable.port, canary.port), (1 - w, w)),
                SINGLE: interleave.Split((single.port,)),
                SPLIT: interleave.Split((split.port,)),
                NGINX: interleave.Split((nginx.port,)),
                FLOOR: interleave.Split((floor.port,)),
            },
            load.Inputs(load.bbc_texts(400), unique=True),
            cfg.interleaved,
        )
    return report(measured, cfg, share, lat)


def report(
    measured: load.Measured, cfg: load.Load, share: dict[str, float | None], lat: dict[str, list[float]]
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
    # latency, inputs interleaved at one connection: what each proxy adds to the same traffic without it
    adds = [
        interleave.added(lat, SINGLE, DIRECT),
        interleave.added(lat, SPLIT, CLIENT_SPLIT),
        interleave.added(lat, NGINX, CLIENT_SPLIT),
        interleave.added(lat, SPLIT, DIRECT),
        interleave.added(lat, CLIENT_SPLIT, DIRECT),
        interleave.added(lat, FLOOR, DIRECT),
    ]
    notes += [
        f"interleaved c1, {len(lat[DIRECT])} inputs through every target: {a.target} adds {a.p50_ms:+.3f} ms of p50"
        f" to {a.baseline} (median per input {a.paired_ms:+.3f} ms)"
        for a in adds
    ]
    checks = [
        results.Check(f"req/s 80/20/direct c{low}", measured.paired(SPLIT, DIRECT, low, "rps"), ">=", 0.9),
        results.Check("added ms 80/20 c1 (median per input, vs the client's own split)", adds[1].paired_ms, "<=", 0.5),
        *(
            results.Check(f"req/s 100/0/direct c{c}", measured.paired(SINGLE, DIRECT, c, "rps"), ">=", 0.9)
            for c in cfg.connections
        ),
        results.Check("added ms 100/0 c1 (median per input, vs direct)", adds[0].paired_ms, "<=", 0.5),
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
            " connection count); <= 0.5 ms added latency at one connection, inputs interleaved (100/0 against"
            " direct, 80/20 against a client splitting by itself); router CPU per request <= 1.5x nginx's (80/20)"
        ),
        host=measured.foreign(),
        vs_direct=vs_direct,
        interleaved={"figures": interleave.figures(lat), "added": [dataclasses.asdict(a) for a in adds]},
        canary_share=share,
        floor_cpu_vs_nginx=floor,
    )
