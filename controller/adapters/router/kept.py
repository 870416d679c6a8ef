"""The router's side of connections kept by its supervisor (``controller.adapters.connkeep`` explains
the design): slots, the hand-over of each accepted connection, close notices (batched once per
loop iteration), the journal, and the connections handed back at start.

A kept router accepts by itself (``Acceptor``) rather than through the loop's server: the
connection goes to the supervisor in the system call right after the ``accept`` that returned it
(its slot chosen and emptied before, the message ready). The loop's server makes the protocol's
``connection_made`` (where the hand-over would be) a callback of its own, run after the rest of the
loop iteration: a SIGKILL in that gap (tens to hundreds of microseconds under load) lost the
connection, and its client read an EOF.

Only a router started by the local runtime's supervisor has a keeper (``MODSHIP_KEEP_FD`` and
``MODSHIP_JOURNAL_FD`` set); a router started by hand serves as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable

from controller.adapters import connkeep

log = logging.getLogger("modship.router")

HAND_BACK_S = 10.0  # the supervisor queues them before the router starts: this is a mere safeguard
_SLOT, _FD = struct.Struct("<I"), struct.Struct("i")
_HOLD = [b"H" + _SLOT.pack(slot) for slot in range(connkeep.SLOTS)]  # the hand-over messages, ready


class Kept:
    """Slots of kept connections; ``hold`` on accept, ``release`` once closed."""

    def __init__(self, channel: socket.socket, journal: connkeep.Journal) -> None:
        self.channel = channel
        self.journal = journal
        self.free = list(range(connkeep.SLOTS - 1, -1, -1))  # a stack: slot 0 first, recent ones reused
        self.closing: list[int] = []
        self._flush: asyncio.Handle | asyncio.TimerHandle | None = None

    @classmethod
    def from_env(cls) -> tuple[Kept | None, list[tuple[int, socket.socket]]]:
        """The keeper the supervisor set up, and the connections it handed back (``(slot, socket)``)."""
        channel_fd, journal_fd = os.environ.get(connkeep.CHANNEL_ENV), os.environ.get(connkeep.JOURNAL_ENV)
        if not channel_fd or not journal_fd:
            return None, []
        channel = socket.socket(fileno=int(channel_fd))
        kept = cls(channel, connkeep.Journal(int(journal_fd)))
        back = list(connkeep.handed_back(channel, timeout=HAND_BACK_S))
        channel.setblocking(False)
        taken = {slot for slot, _ in back}
        kept.free = [s for s in kept.free if s not in taken]
        return kept, [(slot, socket.socket(fileno=fd)) for slot, fd in back]

    def reserve(self) -> int | None:
        """A free slot for the next connection accepted, already empty in the journal (None: every
        slot is taken; that connection is served, not kept)."""
        if not self.free:
            return None
        slot = self.free.pop()
        self.journal.mark(slot, 0, 0)
        return slot

    def unreserve(self, slot: int) -> None:
        self.free.append(slot)

    def hold(self, slot: int, fd: int) -> bool:
        """Give the supervisor a copy of the connection just accepted, in a ``reserve``d slot; False
        (the slot free again) if the channel refused it."""
        try:
            self.channel.sendmsg([_HOLD[slot]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _FD.pack(fd))])
        except OSError:
            self.free.append(slot)
            return False
        return True

    def release(self, slot: int) -> None:
        """The connection in ``slot`` is closed: the supervisor closes its copy (the slot is free
        again once it was told, so that a notice never overtakes a hand-over of the same slot)."""
        self.closing.append(slot)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_soon(self._send_closing)

    def _send_closing(self) -> None:
        self._flush = None
        try:
            self.channel.send(b"C" + connkeep.pack(self.closing))
        except BlockingIOError:
            self._flush = asyncio.get_running_loop().call_later(0.01, self._send_closing)
            return
        except OSError:
            log.warning("could not tell the supervisor of %d closed connections", len(self.closing))
        self.free.extend(self.closing)
        self.closing.clear()


def shut(family: int, fd: int) -> None:
    """Shut a kept connection down: closing the router's fd alone would leave it open, held by the
    supervisor's copy (``fd`` stays open: its owner closes it)."""
    sock = socket.socket(family, socket.SOCK_STREAM, 0, fileno=fd)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.detach()


class Acceptor:
    """Accept on the supervisor's listening socket and hand each connection over at once; ``open``
    then serves it (on the loop, given the slot it is kept in, or None if it could not be kept)."""

    BATCH = 64  # connections accepted per wakeup at most, so that serving the others goes on
    PAUSE_S = 0.1  # out of fds: stop accepting this long (the backlog keeps the clients meanwhile)

    def __init__(
        self, sock: socket.socket, keeper: Kept, open: Callable[[socket.socket, int | None], None], *, backlog: int
    ) -> None:
        self.sock, self.keeper, self.open = sock, keeper, open
        sock.listen(backlog)
        sock.setblocking(False)
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(sock.fileno(), self._ready)
        self._resume: asyncio.TimerHandle | None = None

    def _ready(self) -> None:
        keeper, accept = self.keeper, self.sock._accept  # type: ignore[attr-defined]  # the fd alone: quickest
        for _ in range(self.BATCH):
            slot = keeper.reserve()  # before the accept, which the hand-over then follows at once
            try:
                fd, _ = accept()
            except OSError as exc:
                if slot is not None:
                    keeper.unreserve(slot)
                if isinstance(exc, ConnectionAbortedError):  # the client gave up first: go on
                    continue
                if not isinstance(exc, (BlockingIOError, InterruptedError)):  # out of fds, and the like
                    log.warning("accept failed, pausing for %.1f s: %s", self.PAUSE_S, exc)
                    self.loop.remove_reader(self.sock.fileno())  # the socket stays readable: no busy loop
                    self._resume = self.loop.call_later(self.PAUSE_S, self._again)
                return
            if slot is not None and not keeper.hold(slot, fd):
                slot = None
            self.open(socket.socket(self.sock.family, socket.SOCK_STREAM, 0, fileno=fd), slot)

    def _again(self) -> None:
        self._resume = None
        self.loop.add_reader(self.sock.fileno(), self._ready)

    def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
