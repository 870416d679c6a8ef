"""The supervisor's keeper of router connections and the journal, on real sockets and shared memory
(the end-to-end behaviour under SIGKILL: ``tests/integration/test_router_kept.py``)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from controller.adapters import connkeep


@pytest.fixture
def holder() -> Iterator[connkeep.Holder]:
    h = connkeep.Holder()
    yield h
    h.close()


def router_side(h: connkeep.Holder) -> tuple[socket.socket, list[tuple[int, int]]]:
    """What a starting router does: take the channel, read what is handed back."""
    theirs = h.channel()
    back = list(connkeep.handed_back(theirs, timeout=5))
    return theirs, back


def test_held_connections_outlive_the_router_and_are_handed_to_the_next() -> None:
    h = connkeep.Holder()
    client, server = socket.socketpair()
    try:
        chan, back = router_side(h)
        assert back == []
        socket.send_fds(chan, [b"H" + connkeep.pack([7])], [server.fileno()])
        server.close()  # the router's own copy: gone with the router
        chan.close()  # the router died
        h.drain()
        assert h.conn is None and set(h.held) == {7}
        chan2, back2 = router_side(h)
        assert [slot for slot, _ in back2] == [7]
        resumed = socket.socket(fileno=back2[0][1])
        client.sendall(b"ping")
        assert resumed.recv(4) == b"ping"  # the same connection, still open
        resumed.close()
        socket.send_fds(chan2, [b"C" + connkeep.pack([7])], [])
        h.drain()
        assert h.held == {}
        assert client.recv(1) == b""  # the last copy closed: the client sees the end
        chan2.close()
    finally:
        client.close()
        h.close()


def test_a_slot_handed_over_again_replaces_the_stale_copy(holder: connkeep.Holder) -> None:
    chan, _ = router_side(holder)
    pairs = [socket.socketpair() for _ in range(2)]
    for _, server in pairs:
        socket.send_fds(chan, [b"H" + connkeep.pack([3])], [server.fileno()])
        server.close()
    holder.drain()
    assert len(holder.held) == 1
    assert pairs[0][0].recv(1) == b""  # the first connection's copy was closed
    chan.close()
    for client, _ in pairs:
        client.close()


def test_the_journal_replays_what_was_not_answered_and_marks_what_overflowed() -> None:
    fd = os.memfd_create("test-journal")
    os.ftruncate(fd, connkeep.SLOTS * connkeep.SLOT_SIZE)
    later = connkeep.Journal(os.dup(fd))  # a restarted router maps the same memory
    j = connkeep.Journal(fd)
    n = j.append(5, 0, 0, b"GET /a HTTP/1.1\r\n\r\n")
    n = j.append(5, n, 0, b"GET /b HTTP/1.1\r\n\r\n")
    j.answer(5, n, 1, after=120, size=120)  # the first was answered
    assert later.read(5) == (b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n", 1, (120, 120))
    j.mark(5, 0, 0)
    assert later.read(5) == (b"", 0, None)  # emptied: no answer counted since
    assert j.append(5, 0, 0, b"x" * (connkeep.SLOT_DATA + 1)) == connkeep.OVERFLOW
    assert later.read(5) == (None, 0, None)
    assert later.read(6) == (b"", 0, None)  # other slots untouched


def test_an_answers_figures_count_only_with_the_count_they_were_written_for() -> None:
    """``answer`` writes the answer's figures, then the count: a kill between the two leaves
    figures tagged with a count the header does not have. They are ignored: the earlier answer was
    written before this one was counted, and this one was not written at all."""
    fd = os.memfd_create("test-journal")
    os.ftruncate(fd, connkeep.SLOTS * connkeep.SLOT_SIZE)
    j = connkeep.Journal(fd)
    n = j.append(2, 0, 0, b"GET /a HTTP/1.1\r\n\r\n")
    j.answer(2, n, 1, after=50, size=50)
    assert j.read(2)[1:] == (1, (50, 50))
    connkeep._SENT.pack_into(j.mem, 2 * connkeep.SLOT_SIZE + 8, 90, 2, 40, 2)  # the next answer's figures only
    assert j.read(2)[1:] == (1, None)  # one answer counted, nothing to check
    j.mark(2, n, 2)
    assert j.read(2)[1:] == (2, (90, 40))


def test_unsent_tells_an_answer_that_left_from_one_that_did_not_or_left_in_part() -> None:
    assert connkeep.unsent((1000, 200), 1000) == "sent"
    assert connkeep.unsent((1000, 200), 1025) == "sent"  # an interim 100 Continue written after it
    assert connkeep.unsent((1000, 200), 800) == "unsent"
    assert connkeep.unsent((1000, 200), 900) == "torn"
    assert connkeep.unsent((10, 200), (10 - 200) & 0xFFFFFFFF) == "unsent"  # across the 2**32 wrap


def test_written_is_what_the_kernel_counts_acknowledged_or_still_queued() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    try:
        assert connkeep.written(conn) == 0
        conn.sendall(b"x" * 1000)
        conn.setblocking(False)
        total = 1000
        try:  # more than the client takes: some of it stays queued, unacknowledged
            while True:
                total += conn.send(b"y" * 65536)
        except BlockingIOError:
            pass
        assert connkeep.written(conn) == total
        other = socket.socket(fileno=os.dup(conn.fileno()))  # another process' copy counts the same
        assert connkeep.written(other) == total
        other.close()
        assert connkeep.written(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) is None
    finally:
        for s in (client, conn, server):
            s.close()
