"""The shape of a benchmark's result, and the table printed from it.

Every benchmark returns ``result(...)``::

    {"figures": {...}, "baseline": {...}, "ratio": 0.98, "goal": "text", "met": true,
     "checks": [{"name": ..., "value": ..., "goal": "<= 1.05", "met": true}, ...], ...extra}

``figures`` holds the targets under test and ``baseline`` what they are compared with, all measured
in the same run, keyed by target and then by connection count (``c1``, ``c4``): medians over the
runs of p50/p99 latency (ms), throughput (req/s), CPU per request of all the target's processes and
of the one the load is sent to (``entry``: a proxy, or the service itself), and the cores other
programs kept busy. Checks compare targets paired by round (see ``load.Measured.paired``), so a
check's value can differ a little from the ratio of two medians. ``ratio`` is the first check's
value (the headline); ``met`` is true when every check is; ``host`` says how busy the machine was.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_OPS = {"<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    value: float
    op: str  # "<=" or ">="
    target: float

    @property
    def met(self) -> bool:
        return bool(_OPS[self.op](self.value, self.target))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": round(self.value, 4), "goal": f"{self.op} {self.target:g}", "met": self.met}


def result(
    *, figures: dict[str, Any], baseline: dict[str, Any], checks: list[Check], goal: str, **extra: Any
) -> dict[str, Any]:
    return {
        "figures": figures,
        "baseline": baseline,
        "ratio": round(checks[0].value, 4),
        "goal": goal,
        "met": all(c.met for c in checks),
        "checks": [c.to_json() for c in checks],
        **extra,
    }


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


BUSY_CORES = 0.25  # other programs' median CPU above which timings are flagged as unreliable


def _figure_rows(label: str, per_conn: Any) -> list[str]:
    if not isinstance(per_conn, Mapping) or not all(
        isinstance(f, Mapping) and "p50_ms" in f for f in per_conn.values()
    ):
        return [f"  {label:<30} {json.dumps(per_conn, default=str)[:160]}"]  # not a load figure: as it is
    rows = []
    for conns, f in per_conn.items():
        errors = f"  {f['errors']} errors!" if f.get("errors") else ""
        rows.append(
            f"  {label:<30} {conns:>4} {f['p50_ms']:8.2f} {f['p99_ms']:8.2f} {f['rps']:8.1f}"
            f" {f['rps_range'][0]:6.0f}-{f['rps_range'][1]:<6.0f} {f['cpu_ms_per_req']:8.2f}"
            f" {f['entry_cpu_ms_per_req']:8.2f}{errors}"
        )
    return rows


def render(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Per benchmark: the figures of every target, then every check; last, a one-line summary each."""
    out: list[str] = []
    for name, r in results.items():
        out.append(f"\n{name}: {r.get('title', '')}")
        if "error" in r:
            out.append(f"  ERROR: {r['error']}")
            continue
        if "skipped" in r:
            out.append(f"  SKIPPED: {r['skipped']}")
            continue
        out.append(
            f"  {'target':<30} {'conn':>4} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'(range)':^13} {'CPU ms/req':>8}"
        )
        for label, per_conn in [*r["baseline"].items(), *r["figures"].items()]:
            out.extend(_figure_rows(label, per_conn))
        out.append(f"  {'check (paired, median of rounds)':<34} {'value':>10} {'goal':>10}  met")
        for c in r["checks"]:
            out.append(f"  {c['name']:<34} {c['value']:>10.4g} {c['goal']:>10}  {'yes' if c['met'] else 'NO'}")
        out.extend(f"  {note}" for note in r.get("notes", []))
        host = r.get("host") or {}
        if host.get("median", 0) > BUSY_CORES:
            out.append(
                f"  note: other programs kept {host['median']} cores busy (median; worst run {host['max']}):"
                " timings are unreliable, CPU per request less so"
            )
    out.append(f"\n{'benchmark':<12} {'ratio':>9}  {'met':<4} goal")
    for name, r in results.items():
        if "error" in r:
            out.append(f"{name:<12} {'-':>9}  {'ERR':<4} {r['error'][:80]}")
        elif "skipped" in r:
            out.append(f"{name:<12} {'-':>9}  {'SKIP':<4} {r['skipped'][:80]}")
        else:
            out.append(f"{name:<12} {r['ratio']:>9.4g}  {'yes' if r['met'] else 'NO':<4} {r['goal']}")
    return "\n".join(out)
