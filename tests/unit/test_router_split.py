"""The router's split decision, as a table: header routes, weights, sticky keys, mirroring."""

from __future__ import annotations

from typing import Any

import pytest

from controller.adapters.router import split
from controller.spec.routing import RouterConfig

STABLE = {"revision": "r1", "url": "http://127.0.0.1:3001"}
CANARY = {"revision": "r2", "url": "http://127.0.0.1:3002"}


def config(**kw: Any) -> split.Split:
    doc = {"system": "demo", "generation": 1, "stable": STABLE, "canary": CANARY, **kw}
    return split.Split.of(RouterConfig.model_validate(doc))


def never() -> float:
    raise AssertionError("the decision needed no random draw")


def sticky_key(below: bool, weight: float) -> bytes:
    """A sticky key whose bucket is below (or at/above) ``weight``."""
    return next(k for i in range(1000) if ((split.bucket(k := b"user-%d" % i) < weight) == below))


@pytest.mark.parametrize(
    ("kw", "headers", "draw", "expected"),
    [
        ({"weight": 0}, [], never, False),
        ({"weight": 100}, [], never, True),
        ({"weight": 20}, [], lambda: 0.19, True),
        ({"weight": 20}, [], lambda: 0.2, False),
        ({"weight": 0, "headerRoute": {"name": "X-Canary"}}, [(b"x-canary", b"anything")], never, True),
        ({"weight": 0, "headerRoute": {"name": "x-canary", "value": "1"}}, [(b"x-canary", b"1")], never, True),
        ({"weight": 0, "headerRoute": {"name": "x-canary", "value": "1"}}, [(b"x-canary", b"0")], never, False),
        ({"weight": 100, "headerRoute": {"name": "x-canary", "value": "1"}}, [(b"x-canary", b"0")], never, True),
        ({"weight": 50, "sticky": {"header": "X-User"}}, [(b"x-user", sticky_key(True, 50))], never, True),
        ({"weight": 50, "sticky": {"header": "x-user"}}, [(b"x-user", sticky_key(False, 50))], never, False),
        (
            {"weight": 50, "sticky": {"header": "x-user", "cookie": "uid"}},
            [(b"cookie", b"a=1; uid=" + sticky_key(True, 50))],
            never,
            True,
        ),
        ({"weight": 50, "sticky": {"cookie": "uid"}}, [(b"cookie", b"a=1")], lambda: 0.9, False),
        ({"weight": 50, "sticky": {"header": "x-user"}}, [], lambda: 0.1, True),
    ],
)
def test_to_canary(kw: dict[str, Any], headers: list[tuple[bytes, bytes]], draw: split.Draw, expected: bool) -> None:
    assert split.to_canary(config(**kw), headers, draw) is expected


def test_nothing_goes_to_a_canary_that_is_not_configured() -> None:
    sp = split.Split.of(RouterConfig.model_validate({"system": "demo", "generation": 1, "stable": STABLE}))
    assert not split.to_canary(sp, [(b"x", b"1")], never)
    assert not split.mirrored(sp, never)
    assert split.Split.of(None) == split.Split()


@pytest.mark.parametrize(
    ("kw", "draw", "expected"),
    [
        ({"weight": 0}, never, False),
        ({"weight": 0, "mirror": {"percent": 30}}, lambda: 0.29, True),
        ({"weight": 0, "mirror": {"percent": 30}}, lambda: 0.3, False),
        ({"weight": 0, "mirror": {"percent": 100}}, lambda: 0.999, True),
    ],
)
def test_mirrored(kw: dict[str, Any], draw: split.Draw, expected: bool) -> None:
    assert split.mirrored(config(**kw), draw) is expected


def test_raising_the_weight_only_adds_sticky_users() -> None:
    keys = [b"user-%d" % i for i in range(500)]
    at = {w: {k for k in keys if split.to_canary(config(weight=w, sticky={"header": "u"}), [(b"u", k)], never)}
          for w in (10, 25, 50, 90)}  # fmt: skip
    assert at[10] <= at[25] <= at[50] <= at[90]
    assert 0.4 < len(at[50]) / len(keys) < 0.6
