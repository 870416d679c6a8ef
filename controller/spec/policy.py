"""The governance Policy: who may promote and approve a system's changes, and when.

    apiVersion: modship.dev/v1alpha1
    kind: Policy
    metadata: {name: default}
    spec:
      groups: {ml-leads: [alice, bob], oncall: [carol]}
      tiers:                       # defaults by the strictest stability tier a change touches
        stable:
          promoters: [group:ml-leads, group:oncall]
          approvers: [group:ml-leads]
          approvals: 1             # N of the M approvers; the author never counts
          requireReason: true
          windows: [{cron: "* 9-16 * * 1-5", timezone: Europe/Berlin}]
          minSoak: 10m             # the canary runs at least this long before it may become stable
          ownerApproval: true      # an owner of every changed module must approve
          breakGlass: [group:oncall]
      systems:                     # a system's own rule replaces its tier's default entirely
        topic-classifier: {approvals: 2, approvers: [group:ml-leads, dave]}

A member is a user name or ``group:NAME``. An empty ``promoters`` list means anyone may promote; an
empty ``approvers`` list means anyone but the author may approve. Windows are cron expressions
(minute hour day-of-month month day-of-week) matched minute by minute: a change may start in any
minute the expression matches.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from controller.spec import parse
from controller.spec.base import Spec
from controller.spec.modules import API_VERSION, Stability
from controller.spec.objects import ObjectMeta
from controller.spec.rollout import Duration

GROUP = "group:"
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))


def _field(text: str, name: str, lo: int, hi: int) -> frozenset[int]:
    """One cron field (``*``, ``5``, ``1-5``, ``*/15``, ``9-17/2``, lists of those) -> its values."""
    out: set[int] = set()
    for part in text.split(","):
        rng, _, step_s = part.partition("/")
        try:
            step = int(step_s) if step_s else 1
            if rng == "*":
                a, b = lo, hi
            elif "-" in rng:
                a_s, b_s = rng.split("-", 1)
                a, b = int(a_s), int(b_s)
            else:
                a = b = int(rng)
        except ValueError:
            raise ValueError(f"bad {name} field {text!r}") from None
        if step < 1 or not lo <= a <= b <= hi:
            raise ValueError(f"{name} field {text!r} is out of range {lo}-{hi}")
        out.update(range(a, b + 1, step))
    if name == "day of week" and 7 in out:  # 0 and 7 are both Sunday
        out = (out - {7}) | {0}
    return frozenset(out)


class Window(Spec):
    """Minutes in which a change may start: a cron expression in a time zone (default UTC)."""

    cron: str
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        parts = v.split()
        if len(parts) != 5:
            raise ValueError(f"cron {v!r} needs 5 fields: minute hour day-of-month month day-of-week")
        for text, (name, lo, hi) in zip(parts, _FIELDS, strict=True):
            _field(text, name, lo, hi)
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        if v != "UTC":
            try:
                zoneinfo.ZoneInfo(v)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {v!r}") from None
        return v

    def matches(self, now: float) -> bool:
        """True when the minute of ``now`` (unix time) is in the window."""
        tz: dt.tzinfo = dt.UTC if self.timezone == "UTC" else zoneinfo.ZoneInfo(self.timezone)
        t = dt.datetime.fromtimestamp(now, tz)
        parts = self.cron.split()
        minute, hour, dom, month, dow = (_field(p, *f) for p, f in zip(parts, _FIELDS, strict=True))
        day_ok = t.day in dom, (t.isoweekday() % 7) in dow
        # cron: when both day fields are restricted, either one matching is enough
        restricted = parts[2] != "*", parts[4] != "*"
        day = (day_ok[0] or day_ok[1]) if all(restricted) else (day_ok[0] and day_ok[1])
        return t.minute in minute and t.hour in hour and t.month in month and day


class Rule(Spec):
    """What a change to a system must satisfy. Every field's default lets anything through."""

    promoters: tuple[str, ...] = Field(default=(), description="who may promote (empty: anyone)")
    approvers: tuple[str, ...] = Field(default=(), description="who may approve (empty: anyone but the author)")
    approvals: int = Field(default=0, ge=0, description="approvals required before the canary becomes stable")
    require_reason: bool = False
    windows: tuple[Window, ...] = Field(default=(), description="when a change may start (empty: any time)")
    min_soak: Duration = Field(default=0.0, description="the canary's minimum time before it may become stable")
    owner_approval: bool = Field(default=False, description="an owner of each changed module must approve")
    break_glass: tuple[str, ...] = Field(default=(), description="who may override windows (empty: the promoters)")


class PolicyBody(Spec):
    groups: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    tiers: dict[Stability, Rule] = Field(default_factory=dict)
    systems: dict[str, Rule] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> PolicyBody:
        for where, rule in [*(("tiers." + k, v) for k, v in self.tiers.items()), *self._named()]:
            for key in ("promoters", "approvers", "break_glass"):
                for m in getattr(rule, key):
                    if m.startswith(GROUP) and m[len(GROUP) :] not in self.groups:
                        raise ValueError(f"{where}.{key}: unknown group {m[len(GROUP) :]!r}")
            m_count = len(members(self.groups, rule.approvers))
            if rule.approvers and rule.approvals > m_count:
                raise ValueError(f"{where}.approvals: {rule.approvals} required of only {m_count} approvers")
        return self

    def _named(self) -> list[tuple[str, Rule]]:
        return [("systems." + k, v) for k, v in self.systems.items()]


class Policy(Spec):
    api_version: Literal["modship.dev/v1alpha1"] = API_VERSION
    kind: Literal["Policy"] = "Policy"
    metadata: ObjectMeta = ObjectMeta(name="default")
    spec: PolicyBody = PolicyBody()

    def rule(self, system: str, tiers: set[Stability]) -> Rule:
        """The system's own rule, else the default of the strictest tier the change touches, else
        a rule that lets anything through."""
        if system in self.spec.systems:
            return self.spec.systems[system]
        for tier in (Stability.STABLE, Stability.EXPERIMENTAL):
            if tier in tiers and tier in self.spec.tiers:
                return self.spec.tiers[tier]
        return Rule()


def members(groups: dict[str, tuple[str, ...]], names: tuple[str, ...]) -> frozenset[str]:
    """User names, with ``group:NAME`` expanded."""
    out: set[str] = set()
    for n in names:
        out.update(groups.get(n[len(GROUP) :], ()) if n.startswith(GROUP) else (n,))
    return frozenset(out)


def from_document(data: Any, *, source: str | None = None) -> Policy:
    return parse.to_model(Policy, data, source=source)
