"""The split decision, pure: which revision one request goes to, and whether it is mirrored.

    header route (name, optional exact value) ─▶ canary
    weight 0 / 100                            ─▶ stable / canary
    sticky key (header, else cookie)          ─▶ canary when bucket(key) < weight
    otherwise                                 ─▶ canary when draw() * 100 < weight

``draw`` is the caller's source of randomness (``random.random`` in the server, a constant in
tests); it is only called when the decision needs it. No I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from controller.spec.routing import RouterConfig

Headers = Sequence[tuple[bytes, bytes]]  # names lower-cased
Draw = Callable[[], float]  # uniform in [0, 1)


@dataclass(frozen=True, slots=True)
class Split:
    """What a configuration says about splitting, as bytes ready to compare with request headers."""

    canary: bool = False
    weight: float = 0.0
    route_name: bytes | None = None
    route_value: bytes | None = None  # None: any value of ``route_name``
    sticky_header: bytes | None = None
    sticky_cookie: bytes | None = None
    mirror: float = 0.0  # percent of stable's requests copied to the canary

    @property
    def keyed(self) -> bool:
        """Whether ``to_canary`` reads the request's headers (a header route or a sticky key)."""
        return self.route_name is not None or self.sticky_header is not None or self.sticky_cookie is not None

    @classmethod
    def of(cls, config: RouterConfig | None) -> Split:
        if config is None or config.stable is None:
            return cls()
        hr, sticky = config.header_route, config.sticky
        return cls(
            canary=config.canary is not None,
            weight=config.weight,
            route_name=hr.name.encode() if hr else None,
            route_value=hr.value.encode() if hr and hr.value is not None else None,
            sticky_header=sticky.header.encode() if sticky and sticky.header else None,
            sticky_cookie=sticky.cookie.encode() if sticky and sticky.cookie else None,
            mirror=config.mirror.percent if config.mirror else 0.0,
        )


def header(headers: Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None


def cookie(headers: Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n == b"cookie":
            for part in v.split(b";"):
                k, _, val = part.strip().partition(b"=")
                if k == name:
                    return val
    return None


def bucket(key: bytes) -> float:
    """A stable position in [0, 100) for a sticky key: raising the weight only adds users."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % 10_000 / 100


def to_canary(split: Split, headers: Headers, draw: Draw) -> bool:
    """Whether this request goes to the canary."""
    if not split.canary:
        return False
    if split.route_name is not None:
        v = header(headers, split.route_name)
        if v is not None and (split.route_value is None or v == split.route_value):
            return True
    w = split.weight
    if w <= 0 or w >= 100:
        return w >= 100
    key = header(headers, split.sticky_header) if split.sticky_header else None
    if key is None and split.sticky_cookie is not None:
        key = cookie(headers, split.sticky_cookie)
    return (bucket(key) if key else draw() * 100) < w


def mirrored(split: Split, draw: Draw) -> bool:
    """Whether a request stable served is also sent to the canary (only compared, never answered)."""
    return split.canary and split.mirror > 0 and draw() * 100 < split.mirror
