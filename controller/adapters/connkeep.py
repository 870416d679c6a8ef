"""Client connections that outlive the router process: what the local runtime's supervisor keeps so
that a SIGKILLed router loses no request.

A killed process loses what only it holds. Two things are therefore held outside the router:

- **the connection.** On accept the router sends a duplicate of the connection's fd to its
  supervisor over a Unix socket (``SCM_RIGHTS``); the kernel keeps a connection open while any
  process holds it. When the router closes a connection it shuts it down first (the supervisor's
  copy must not keep it open) and tells the supervisor, which closes its copy. A restarted router
  gets the copies back before it serves anything, and resumes them.
- **the request.** What the router read from a connection and has not answered yet is copied into
  a journal: shared memory (a memfd the supervisor creates and keeps), one slot per kept connection
  holding the bytes read since the last moment everything read was answered, and how many requests
  of them were answered since. A restarted router parses a resumed connection's slot again, skips
  the requests already answered and serves the others (again: the killed router may have forwarded
  them). This costs no system call per request: two stores into memory, one of them a memcpy.

Replaying is safe because what clients send through the router — ``/predict`` and the other
inference endpoints — reads a model and changes nothing; the admin API's writes set a whole
configuration, so sending one twice is the same as once. A connection whose unanswered bytes
outgrow a slot (``SLOT_DATA``, far above a request of the shipped examples) is marked; a
restarted router closes it instead of resuming it.

**An answer counted but not written.** The router counts an answer in the journal, then writes it: a
kill between the two would leave the request marked answered although its client never got the
answer. The kernel settles it: it knows how many bytes the router wrote to the connection in all
(``written``: bytes acknowledged plus those still queued). With each answer the journal keeps the
connection's total after it and the answer's size; the next router compares (``unsent``): the total
reached, the answer left; short of it by exactly the answer, it did not, and is served again; short
by less (written in part: the rest died with the router's buffer), the connection is closed, as its
client can only be given a torn answer. The slot's bytes are kept until the next request arrives,
so that the last one can still be replayed.

What remains lost: a connection accepted but not yet handed over (the router hands it over right
after its ``accept`` returns) and bytes read but not yet journaled: each a window of a few
microseconds, against requests that take milliseconds.

The journal's slot: a 24-byte header, ``length`` and ``answered`` (two u32), then the last answer's
``after`` and ``answered`` and its ``size`` and ``answered`` (the copies of ``answered`` tell whether
they belong to the count in the first word), then up to ``SLOT_DATA`` bytes. Messages on the Unix
socket (``SOCK_SEQPACKET``):

- router → supervisor: ``H`` + slot (u32) with one fd: hold it; ``C`` + slots: close them;
- supervisor → router, as soon as the router starts: ``B`` + slots with as many fds; ``E``: done.

Standard library only: the supervisor imports this module.
"""

from __future__ import annotations

import array
import fcntl
import mmap
import os
import socket
import struct
from collections.abc import Iterator

SLOTS = 512  # connections kept at most; more are served, but not kept
SLOT_SIZE = 64 << 10
HEADER_SIZE = 24
SLOT_DATA = SLOT_SIZE - HEADER_SIZE
OVERFLOW = 0xFFFFFFFF  # a slot's length: its bytes did not fit
BATCH = 250  # fds per message (the kernel takes up to 253)
GAP = 0.05  # the supervisor handles the router's messages this often (they queue meanwhile)
CHANNEL_ENV, JOURNAL_ENV = "MODSHIP_KEEP_FD", "MODSHIP_JOURNAL_FD"
_HEADER = struct.Struct("<II")
_SENT = struct.Struct("<IIII")
_U32 = 0xFFFFFFFF
_TIOCOUTQ = 0x5411  # SIOCOUTQ: bytes written and not yet acknowledged
_BYTES_ACKED = struct.Struct("Q")  # struct tcp_info's tcpi_bytes_acked (Linux >= 4.1), at 120


def slots(data: bytes) -> list[int]:
    return array.array("I", data).tolist()


def pack(slots: list[int]) -> bytes:
    return array.array("I", slots).tobytes()


class Holder:
    """The supervisor's side: holds the fds of the router's client connections and the journal, and
    gives them to each router it starts. Driven by the supervisor's own loop (``drain``), no thread."""

    def __init__(self) -> None:
        self.journal = os.memfd_create("modship-router-journal")
        os.ftruncate(self.journal, SLOTS * SLOT_SIZE)  # sparse: a page is used once a slot touches it
        self.held: dict[int, int] = {}  # slot -> fd
        self.conn: socket.socket | None = None

    def channel(self) -> socket.socket:
        """A channel for the router about to start (its end is returned; close it once passed on),
        with the connections held so far already queued on it."""
        self.drain()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        items = sorted(self.held.items())
        for i in range(0, len(items), BATCH):
            batch = items[i : i + BATCH]
            socket.send_fds(ours, [b"B" + pack([s for s, _ in batch])], [fd for _, fd in batch])
        ours.send(b"E")
        ours.setblocking(False)
        self.conn = ours
        return theirs

    def drain(self) -> None:
        """Handle every message queued; at the router's end (EOF) close the channel."""
        while self.conn is not None:
            try:
                data, fds, _, _ = socket.recv_fds(self.conn, 4096, BATCH)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                for fd in fds:
                    os.close(fd)
                self.conn.close()
                self.conn = None
                return
            self.handle(data, fds)

    def handle(self, data: bytes, fds: list[int]) -> None:
        kind, ids = data[:1], slots(data[1:])
        if kind == b"H" and len(ids) == 1 and len(fds) == 1:
            old = self.held.pop(ids[0], None)
            if old is not None:
                os.close(old)
            self.held[ids[0]] = fds[0]
            return
        for fd in fds:  # nothing else carries fds
            os.close(fd)
        if kind == b"C":
            for s in ids:
                copy = self.held.pop(s, None)
                if copy is not None:
                    os.close(copy)

    def close(self) -> None:
        for fd in self.held.values():
            os.close(fd)
        self.held.clear()
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        os.close(self.journal)


class Journal:
    """The router's view of the journal (see the module docstring for the layout)."""

    def __init__(self, fd: int) -> None:
        self.mem = mmap.mmap(fd, SLOTS * SLOT_SIZE)
        os.close(fd)  # the mapping stays; the supervisor keeps its own fd

    def append(self, slot: int, length: int, answered: int, data: bytes) -> int:
        """Add what was read after ``length`` bytes (``answered`` requests of which were answered);
        the new length, or ``OVERFLOW``. The bytes are in place before the header names them."""
        end = length + len(data)
        if end > SLOT_DATA:
            _HEADER.pack_into(self.mem, slot * SLOT_SIZE, OVERFLOW, 0)
            return OVERFLOW
        at = slot * SLOT_SIZE + HEADER_SIZE
        self.mem[at + length : at + end] = data
        _HEADER.pack_into(self.mem, slot * SLOT_SIZE, end, answered)
        return end

    def mark(self, slot: int, length: int, answered: int) -> None:
        _HEADER.pack_into(self.mem, slot * SLOT_SIZE, length, answered)

    def answer(self, slot: int, length: int, answered: int, *, after: int, size: int) -> None:
        """Count an answer of ``size`` bytes, after which ``after`` bytes were written to the
        connection in all (before it is written: see the module docstring)."""
        _SENT.pack_into(self.mem, slot * SLOT_SIZE + 8, after & _U32, answered, size & _U32, answered)
        _HEADER.pack_into(self.mem, slot * SLOT_SIZE, length, answered)

    def read(self, slot: int) -> tuple[bytes | None, int, tuple[int, int] | None]:
        """The slot's unanswered bytes (None: they had overflowed), how many requests of them were
        answered, and the last answer's ``(after, size)`` (None: none counted since the slot was
        emptied)."""
        base = slot * SLOT_SIZE
        length, answered = _HEADER.unpack_from(self.mem, base)
        if length == OVERFLOW:
            return None, 0, None
        after, tag, size, tag2 = _SENT.unpack_from(self.mem, base + 8)
        last = (after, size) if answered and tag == tag2 == answered else None
        at = base + HEADER_SIZE
        return bytes(self.mem[at : at + length]), answered, last


def written(sock: socket.socket) -> int | None:
    """The bytes written to a TCP connection since it opened, by any process (mod 2**32), as the
    kernel counts them; None if it cannot tell."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        queued = array.array("i", [0])
        fcntl.ioctl(sock.fileno(), _TIOCOUTQ, queued)
    except OSError:
        return None
    if len(info) < 128:
        return None
    acked: int = _BYTES_ACKED.unpack_from(info, 120)[0]
    return (acked + queued[0]) & _U32


def unsent(last: tuple[int, int], written: int) -> str:
    """Did the last answer counted leave? ``"sent"``; ``"unsent"`` (none of it: serve it again);
    ``"torn"`` (in part). ``last`` is ``(after, size)`` from ``Journal.read``; bytes written after
    it (an interim ``100 Continue``) do not change the answer."""
    after, size = last
    short = (after - written) & _U32
    if short == 0 or short > _U32 // 2:  # reached, or beyond
        return "sent"
    return "unsent" if short == size else "torn"


def handed_back(conn: socket.socket, *, timeout: float) -> Iterator[tuple[int, int]]:
    """The router's side at its start: the ``(slot, fd)`` pairs the supervisor holds."""
    conn.settimeout(timeout)
    while True:
        data, fds, _, _ = socket.recv_fds(conn, 4096, BATCH)
        if data[:1] != b"B":
            for fd in fds:
                os.close(fd)
            return
        yield from zip(slots(data[1:]), fds, strict=True)
