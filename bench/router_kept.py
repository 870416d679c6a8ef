"""What keeping client connections costs the router (``controller.adapters.connkeep``), side by side:

    python -m bench.router_kept [--rounds 5] [--seconds 5]

Two routers in front of the same fast upstream (``tests.support.upstream``, so the router's own work
dominates): ``plain``, started by hand (no keeper), and ``kept``, under the local runtime's
supervisor (connections handed over, requests journaled). wrk POSTs through each in turn, on
keep-alive connections and with ``Connection: close`` (a connection per request: the hand-over and
the close notice on every request), at 1 and 4 connections. Printed: CPU per request (ms) of the
router process and of the supervisor (read from ``/proc``), and requests per second; medians over
the rounds. Not part of ``make bench``: a check for changes to the keeper's hot path.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from controller.adapters.local_units import Proc, Units
from tests.support.services import free_port, http_ok, stop_process, wait_until
from tests.support.upstream import Upstream

TICK = os.sysconf("SC_CLK_TCK")
LUA = 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = \'{"text": "a draw"}\'\n'


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wrk(url: str, script: Path, connections: int, seconds: float) -> int:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return int(next(line for line in out.splitlines() if "requests in" in line).split()[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="modship-router-kept-"))
    scripts = {"keep-alive": tmp / "keep.lua", "close": tmp / "close.lua"}
    scripts["keep-alive"].write_text(LUA)
    scripts["close"].write_text(LUA + 'wrk.headers["Connection"] = "close"\n')
    units = Units(tmp / "units", grace=2.0)
    with Upstream("r1", log_dir=tmp).running() as up:
        plain_port, kept_port = free_port(), free_port()
        base = [sys.executable, "-m", "controller.entrypoints.router", "--system", "s", "--log-level", "WARNING"]
        plain = subprocess.Popen([*base, "--port", str(plain_port)], start_new_session=True,
                                 stdout=(tmp / "plain.log").open("wb"), stderr=subprocess.STDOUT)  # fmt: skip
        pid, start, record = units.spawn("router", [*base, "--port", str(kept_port)], dict(os.environ),
                                         tmp / "kept.log", listen=f"127.0.0.1:{kept_port}")  # fmt: skip
        unit = Proc("router", pid, kept_port, time.time(), [], start=start, record=record)
        try:
            for port in (plain_port, kept_port):
                url = f"http://127.0.0.1:{port}"
                wait_until(lambda u=url: http_ok(f"{u}/-/modship/healthz"), timeout=30, what="the router")  # type: ignore[misc]
                doc = {"system": "s", "generation": 1, "stable": {"revision": "r1", "url": up.url}}
                httpx.put(f"{url}/-/modship/config", json=doc, timeout=10).raise_for_status()
            kept_main = next(m["pid"] for m in units.members(unit) if m["process"] == "router")
            targets = {"plain": (plain_port, plain.pid, None), "kept": (kept_port, kept_main, pid)}
            for mode, script in scripts.items():
                for c in (1, 4):
                    rows: dict[str, list[tuple[float, float, float]]] = {}
                    for _ in range(args.rounds):
                        for name, (port, router_pid, sup_pid) in targets.items():
                            r0, s0 = cpu_s(router_pid), cpu_s(sup_pid) if sup_pid else 0.0
                            n = wrk(f"http://127.0.0.1:{port}/predict", script, c, args.seconds)
                            r1, s1 = cpu_s(router_pid), cpu_s(sup_pid) if sup_pid else 0.0
                            rows.setdefault(name, []).append(
                                ((r1 - r0) * 1e3 / n, (s1 - s0) * 1e3 / n, n / args.seconds)
                            )
                    for name, xs in rows.items():
                        med = [statistics.median(x[i] for x in xs) for i in range(3)]
                        print(f"{mode:10} c{c} {name:5}  router {med[0]:.4f} ms/req  supervisor {med[1]:.4f} ms/req  "
                              f"{med[2]:.0f} req/s")  # fmt: skip
        finally:
            stop_process(plain)
            units.stop([unit])


if __name__ == "__main__":
    main()
