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
restarted router closes it instead of resuming it. What remains lost: a connection accepted but not
yet handed over (the router hands it over right after its ``accept`` returns), bytes read but not
yet journaled, and an answer counted but not yet written: each a window of a few microseconds,
against requests that take milliseconds.

The journal's slot: an 8-byte header, ``length`` and ``answered`` (two u32, written in one store),
then up to ``SLOT_DATA`` bytes. Messages on the Unix socket (``SOCK_SEQPACKET``):

- router → supervisor: ``H`` + slot (u32) with one fd: hold it; ``C`` + slots: close them;
- supervisor → router, as soon as the router starts: ``B`` + slots with as many fds; ``E``: done.

Standard library only: the supervisor imports this module.
"""

from __future__ import annotations

import array
import mmap
import os
import socket
import struct
from collections.abc import Iterator

SLOTS = 512  # connections kept at most; more are served, but not kept
SLOT_SIZE = 64 << 10
SLOT_DATA = SLOT_SIZE - 8
OVERFLOW = 0xFFFFFFFF  # a slot's length: its bytes did not fit
BATCH = 250  # fds per message (the kernel takes up to 253)
GAP = 0.05  # the supervisor handles the router's messages this often (they queue meanwhile)
CHANNEL_ENV, JOURNAL_ENV = "MODSHIP_KEEP_FD", "MODSHIP_JOURNAL_FD"
_HEADER = struct.Struct("<II")


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
        at = slot * SLOT_SIZE + 8
        self.mem[at + length : at + end] = data
        _HEADER.pack_into(self.mem, slot * SLOT_SIZE, end, answered)
        return end

    def mark(self, slot: int, length: int, answered: int) -> None:
        _HEADER.pack_into(self.mem, slot * SLOT_SIZE, length, answered)

    def read(self, slot: int) -> tuple[bytes | None, int]:
        """The slot's unanswered bytes (None: they had overflowed) and how many requests of them
        were answered."""
        length, answered = _HEADER.unpack_from(self.mem, slot * SLOT_SIZE)
        if length == OVERFLOW:
            return None, 0
        at = slot * SLOT_SIZE + 8
        return bytes(self.mem[at : at + length]), answered


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
