"""A restarted router resuming a kept connection asks the kernel whether the killed router's last
counted answer left (``connkeep.written``/``unsent``): sent, it is not answered again; not sent at
all, the request is served again; sent in part, the connection is closed. The killed router is
played by hand (its journal entries and writes), the new one is the real ``Router`` on uvloop,
with no route configured, so that it answers every request with a 503 of its own."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
import uvloop

from controller.adapters import connkeep
from controller.adapters.router import kept
from controller.adapters.router.server import Router

REQUEST = b"POST /predict HTTP/1.1\r\nhost: r\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"
OLD_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nold"
SLOT = 7


@pytest.fixture
def pair() -> Iterator[tuple[connkeep.Holder, socket.socket, socket.socket]]:
    holder = connkeep.Holder()
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname(), timeout=10)
    conn, _ = server.accept()
    server.close()
    yield holder, client, conn
    client.close()
    holder.close()


def killed_router(holder: connkeep.Holder, conn: socket.socket, *, wrote: int) -> None:
    """What the killed router did: took the connection (handed to its supervisor), read the
    request, counted its answer, wrote ``wrote`` bytes of it, and died."""
    channel = holder.channel()
    assert list(connkeep.handed_back(channel, timeout=5)) == []
    socket.send_fds(channel, [b"H" + connkeep.pack([SLOT])], [conn.fileno()])
    journal = connkeep.Journal(os.dup(holder.journal))
    read = conn.recv(65536)
    assert read == REQUEST
    n = journal.append(SLOT, 0, 0, read)
    journal.answer(SLOT, n, 1, after=len(OLD_ANSWER), size=len(OLD_ANSWER))
    conn.sendall(OLD_ANSWER[:wrote])
    conn.close()
    channel.close()
    holder.drain()


def next_router(holder: connkeep.Holder) -> None:
    channel = holder.channel()
    back = list(connkeep.handed_back(channel, timeout=5))
    assert [slot for slot, _ in back] == [SLOT]
    channel.setblocking(False)

    async def main() -> None:
        router = Router("s", keeper=kept.Kept(channel, connkeep.Journal(os.dup(holder.journal))))
        await router.resume(SLOT, socket.socket(fileno=back[0][1]))
        await router.close(grace=5.0)

    try:
        uvloop.run(main())
    finally:
        channel.close()


def received(client: socket.socket) -> bytes:
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize(
    ("wrote", "served_again"),
    [(len(OLD_ANSWER), False), (0, True), (20, False)],
    ids=["sent: not given again", "never written: served again", "written in part: closed"],
)
def test_a_counted_answer_is_served_again_only_if_none_of_it_left(
    pair: tuple[connkeep.Holder, socket.socket, socket.socket], wrote: int, served_again: bool
) -> None:
    holder, client, conn = pair
    client.sendall(REQUEST)
    killed_router(holder, conn, wrote=wrote)
    next_router(holder)
    got = received(client)  # up to the end: the request asked for the connection to close
    assert got[:wrote] == OLD_ANSWER[:wrote]
    rest = got[wrote:]
    if served_again:  # the new router's answer (no route: a 503), once
        assert rest.startswith(b"HTTP/1.1 503") and rest.count(b"HTTP/1.1") == 1
    else:  # nothing spliced after it: neither a second answer nor the tail of a torn one
        assert rest == b""
