"""A kept router's ``Acceptor``: every connection is in its supervisor's hands before the router's
loop does anything with it, so a SIGKILL at any later moment cannot lose it. Real sockets, a real
channel to a ``connkeep.Holder`` and the shared-memory journal."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest
import uvloop

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
        uvloop.run(main())  # the router's loop
        assert len(seen) == 5
        assert all(held for _, held in seen), seen  # the supervisor held it first
        assert len({slot for slot, _ in seen}) == 5  # a slot each
    finally:
        for c in opened:
            c.close()
        theirs.close()
        holder.close()


class _OutOfFds(socket.socket):
    """A listening socket whose ``accept`` fails as when the process is out of fds, until ``until``."""

    until = 0.0

    def _accept(self) -> tuple[int, object]:
        if time.monotonic() < self.until:
            raise OSError(24, "Too many open files")
        return super()._accept()  # type: ignore[misc, no-any-return]


def test_out_of_fds_pauses_accepting_then_serves_the_waiting_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kept.Acceptor, "PAUSE_S", 0.05)
    holder = connkeep.Holder()
    theirs = holder.channel()
    listener = _OutOfFds(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    opened: list[socket.socket] = []
    readiness: list[int] = []

    async def main() -> None:
        k = kept.Kept(theirs, connkeep.Journal(os.dup(holder.journal)))
        assert list(connkeep.handed_back(theirs, timeout=5)) == []
        theirs.setblocking(False)
        acceptor = kept.Acceptor(listener, k, lambda conn, _slot: opened.append(conn), backlog=16)
        wakeups = acceptor._ready

        def counted() -> None:
            readiness.append(1)
            wakeups()

        loop = asyncio.get_running_loop()
        loop.remove_reader(listener.fileno())
        loop.add_reader(listener.fileno(), counted)
        acceptor._ready = counted  # type: ignore[method-assign]
        listener.until = time.monotonic() + 0.03  # shorter than the pause: one failure if paused
        client = socket.create_connection(listener.getsockname())
        try:
            deadline = loop.time() + 5
            while not opened and loop.time() < deadline:
                await asyncio.sleep(0.005)
        finally:
            acceptor.close()
            client.close()

    try:
        uvloop.run(main())  # the router's loop
        assert len(opened) == 1  # served once accepting resumed
        assert len(readiness) <= 3  # paused, not spinning on a socket that stays readable
    finally:
        for c in opened:
            c.close()
        theirs.close()
        holder.close()


def test_the_router_serves_an_accepted_connection_and_frees_the_slot_of_one_it_cannot_open() -> None:
    from controller.adapters.router.server import Router

    holder = connkeep.Holder()
    theirs = holder.channel()
    listener = socket.create_server(("127.0.0.1", 0))

    async def main() -> tuple[int, set[int], bool]:
        k = kept.Kept(theirs, connkeep.Journal(os.dup(holder.journal)))
        assert list(connkeep.handed_back(theirs, timeout=5)) == []
        theirs.setblocking(False)
        k.free = [s for s in k.free if s not in (3, 4)]  # as if reserved by the acceptor
        router = Router("s", keeper=k)
        client = socket.create_connection(listener.getsockname())
        conn, _ = listener.accept()
        bad = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # not a stream: cannot be opened
        try:
            router.accepted(conn, 3)
            router.accepted(bad, 4)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while not router.clients and loop.time() < deadline:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0)  # the close notice goes out on the next loop iteration
            return len(router.clients), {3, 4} & set(k.free), bad.fileno() == -1
        finally:
            for c in list(router.clients):
                c.close()
            client.close()

    try:
        served, freed, bad_closed = uvloop.run(main())  # the router's loop
        assert served == 1  # the good one reached the protocol, in its slot
        assert freed == {4} and bad_closed  # the other: its slot free again, its socket closed
    finally:
        listener.close()
        theirs.close()
        holder.close()
