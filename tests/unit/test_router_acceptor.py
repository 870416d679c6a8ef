"""A kept router's ``Acceptor``: every connection is in its supervisor's hands before the router's
loop does anything with it, so a SIGKILL at any later moment cannot lose it. Real sockets, a real
channel to a ``connkeep.Holder`` and the shared-memory journal."""

from __future__ import annotations

import asyncio
import os
import socket

from controller.adapters import connkeep
from controller.adapters.router import kept


def test_each_connection_is_held_by_the_supervisor_before_the_router_opens_it() -> None:
    holder = connkeep.Holder()
    theirs = holder.channel()
    journal = os.dup(holder.journal)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[tuple[int | None, bool]] = []
    opened: list[socket.socket] = []

    def open_(conn: socket.socket, slot: int | None) -> None:
        holder.drain()  # what the supervisor has been sent by now
        ours = os.fstat(conn.fileno()).st_ino
        seen.append((slot, slot is not None and os.fstat(holder.held[slot]).st_ino == ours))
        opened.append(conn)

    async def main() -> None:
        k = kept.Kept(theirs, connkeep.Journal(journal))
        assert list(connkeep.handed_back(theirs, timeout=5)) == []
        theirs.setblocking(False)
        acceptor = kept.Acceptor(listener, k, open_, backlog=16)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while len(seen) < 5 and loop.time() < deadline:
                await asyncio.sleep(0.01)
        finally:
            acceptor.close()
            for c in clients:
                c.close()

    try:
        asyncio.run(main())
        assert len(seen) == 5
        assert all(held for _, held in seen), seen  # the supervisor held it first
        assert len({slot for slot, _ in seen}) == 5  # a slot each
    finally:
        for c in opened:
            c.close()
        theirs.close()
        holder.close()
