"""The router's side of connections kept by its supervisor (``controller.adapters.connkeep`` explains
the design): slots, the hand-over of each accepted connection, close notices (batched once per
loop iteration), the journal, and the connections handed back at start.

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

from controller.adapters import connkeep

log = logging.getLogger("modship.router")

HAND_BACK_S = 10.0  # the supervisor queues them before the router starts: this is a mere safeguard
_SLOT = struct.Struct("<I")


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

    def hold(self, fd: int) -> int | None:
        """Give the supervisor a copy of a freshly accepted connection; its slot, or None when it
        cannot be kept (every slot taken, the channel full)."""
        if not self.free:
            return None
        slot = self.free.pop()
        self.journal.mark(slot, 0, 0)
        try:
            socket.send_fds(self.channel, [b"H" + _SLOT.pack(slot)], [fd])
        except OSError:
            self.free.append(slot)
            return None
        return slot

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
