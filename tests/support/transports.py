"""Transports for driving the router's protocols by hand in unit tests."""

from __future__ import annotations


class NullTransport:
    """Takes every write and close and does nothing with them."""

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass
