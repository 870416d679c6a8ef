"""The floor of a Python proxy on uvloop, for the router benchmark: each client connection gets one
upstream connection, and bytes are relayed both ways as they come, framed by httptools on both sides
(as any HTTP proxy must) but with no routing, no buffering for replay, no telemetry, no metrics.

    python -m bench.relay_floor --port P --upstream-port U

It is not a usable proxy (one request in flight per connection, no error handling); its CPU per
request is what the modship router's could at best come down to while written in Python on the same
event loop, and so tells how far a goal stated against nginx is reachable at all.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

import httptools
import uvloop


class _Up(asyncio.Protocol):
    def __init__(self, client: _Client) -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)
        if self.client.transport is not None:
            self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Client(asyncio.Protocol):
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.up: _Up | None = None
        self.pending: list[bytes] = []
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        _, self.up = await asyncio.get_running_loop().create_connection(lambda: _Up(self), *self.upstream)
        assert self.up.transport is not None
        for data in self.pending:
            self.up.transport.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)
        if self.up is None or self.up.transport is None:
            self.pending.append(data)
        else:
            self.up.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _serve(port: int, upstream: tuple[str, int]) -> None:
    server = await asyncio.get_running_loop().create_server(lambda: _Client(upstream), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.relay_floor", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream-port", type=int, required=True)
    a = p.parse_args()
    uvloop.run(_serve(a.port, ("127.0.0.1", a.upstream_port)))


if __name__ == "__main__":
    main()
