"""The router process: ``python -m controller.entrypoints.router --port P --system NAME --state FILE``.

One per system, started by the local runtime; the controller configures it over its admin API
(``PUT /-/modship/config``). It serves the persisted configuration right away after a restart and
exits cleanly (status 0) on SIGTERM or SIGINT. ``MODSHIP_ROUTER_TOKEN``, when set, is the token its
admin API asks for (in a cluster, from a Secret); it is never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
from pathlib import Path

import uvloop

from controller.adapters.router import server


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modship-router", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, required=True, help="port to listen on (0: any free port)")
    p.add_argument("--system", required=True, help="the system this router serves")
    p.add_argument("--state", type=Path, help="file persisting the last configuration (atomic writes)")
    p.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    p.add_argument(
        "--fd",
        type=int,
        default=int(os.environ.get("MODSHIP_LISTEN_FD") or 0) or None,
        help="serve on this inherited listening socket instead of binding (env MODSHIP_LISTEN_FD; the local "
        "runtime's supervisor holds the socket so that clients wait while a crashed router restarts)",
    )
    return p


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sock = socket.socket(fileno=args.fd) if args.fd else None
    token = os.environ.get("MODSHIP_ROUTER_TOKEN", "").strip().encode() or None
    await server.run(
        host=args.host, port=args.port, system=args.system, state=args.state, stop=stop, sock=sock, token=token
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=args.log_level.upper(), format=fmt)
    uvloop.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
