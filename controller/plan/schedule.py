"""When each active check is measured next, and over which window: pure, from the spec and status."""

from __future__ import annotations

from controller.plan import analysis
from controller.plan.status import Phase, RolloutStatus
from controller.spec.rollout import Rollout


def due_checks(r: Rollout, s: RolloutStatus, now: float) -> list[str]:
    """Names of checks whose next measurement is due at ``now``."""
    return sorted(name for name, at in schedule(r, s).items() if at <= now)


def windows(r: Rollout, s: RolloutStatus, now: float) -> dict[str, tuple[float, bool]]:
    """For each active check: the window to query (never reaching back before its analysis
    started, so an earlier step's or attempt's traffic cannot decide it) and whether it is full."""
    out: dict[str, tuple[float, bool]] = {}
    starts = [(n, s.step_started) for n in active_step_checks(r, s)]
    starts += [(n, s.background_started) for n in active_background(r, s) if n not in dict(starts)]
    for name, since in starts:
        w = r.check(name).window
        age = now - since if since is not None else w
        out[name] = (max(1.0, min(w, age)), age >= w)
    return out


def active_step_checks(r: Rollout, s: RolloutStatus) -> tuple[str, ...]:
    if s.canary is None or s.phase is not Phase.PROGRESSING or s.step >= len(r.steps):
        return ()
    current = r.steps[s.step].analysis
    return current.checks if current is not None else ()


def active_background(r: Rollout, s: RolloutStatus) -> tuple[str, ...]:
    bg = r.spec.strategy.canary.analysis
    if bg is None or not s.in_flight or s.background_started is None:
        return ()
    return bg.checks


def schedule(r: Rollout, s: RolloutStatus) -> dict[str, float]:
    """The time each active check is due next."""
    out: dict[str, float] = {}
    for name in active_step_checks(r, s):
        c = r.check(name)
        assert s.step_started is not None
        out[name] = analysis.due(c, s.step_analysis.get(name), s.step_started, 0, count=analysis.step_count(c))
    for name in active_background(r, s):
        assert s.background_started is not None
        at = analysis.due(r.check(name), s.background.get(name), s.background_started, 0, count=None)
        out[name] = min(at, out.get(name, at))
    return out
