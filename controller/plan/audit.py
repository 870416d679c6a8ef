"""The audit log's hash chain, pure: how an entry is sealed, how a chain is verified and filtered.

Every entry carries ``seq`` (0, 1, 2, ...), ``prev`` (the SHA-256 of the previous entry, 64 zeros for
the first) and ``hash`` (the SHA-256 of the entry's canonical JSON without ``hash``). Editing an entry
breaks its hash; removing or reordering entries breaks the next entry's ``prev`` or the ``seq``
numbering. Removing entries *from the end* leaves a valid shorter chain: only an anchor kept
elsewhere (the head's seq and hash) detects that, and someone able to rewrite both the whole chain
and its anchor is not detected at all.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64


class Action(enum.StrEnum):
    REGISTER = "register"  # a module version registered
    ALIAS = "alias"  # a registry alias moved (@stable, @canary)
    DEPLOY = "deploy"
    PROMOTE = "promote"  # a person started a rollout (or promote --full)
    PROMOTED = "promoted"  # the canary became stable
    APPROVE = "approve"
    REJECT = "reject"
    OVERRIDE = "override"  # break-glass, or compatibility problems forced
    ABORT = "abort"  # asked by a person, or automatic (the controller is the actor)
    ROLLBACK = "rollback"
    UNDO = "undo"
    TOGGLE = "toggle"
    COMMAND = "command"  # pause, resume, retry
    POLICY = "policy"  # the policy changed
    REFUSED = "refused"  # the operator did not start a change the policy forbids (Kubernetes)


def canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(entry: dict[str, Any]) -> str:
    """The SHA-256 of an entry (its ``hash`` field left out)."""
    return hashlib.sha256(canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def seal(body: dict[str, Any], *, seq: int, prev: str) -> dict[str, Any]:
    """The entry that follows one with hash ``prev`` at position ``seq``."""
    entry = {**body, "seq": seq, "prev": prev}
    return {**entry, "hash": digest(entry)}


@dataclass(frozen=True, slots=True)
class Broken:
    """The first entry that does not verify: its line number (1-based) and why."""

    line: int
    seq: int | None
    why: str


def verify(lines: Sequence[str], *, anchor: tuple[int, str] | None = None) -> Broken | None:
    """Check a whole chain (its lines as written); None when it is intact. ``anchor`` is the head
    (seq, hash) recorded elsewhere: a chain cut short, or a different head, is then detected too."""
    prev, seq = GENESIS, 0
    for i, line in enumerate(lines, start=1):
        try:
            e = json.loads(line)
        except ValueError:
            return Broken(i, None, "not JSON")
        if not isinstance(e, dict):
            return Broken(i, None, "not a JSON object")
        got = e.get("seq")
        if got != seq:
            return Broken(i, got, f"seq {got} where {seq} was expected (an entry removed or reordered)")
        if e.get("prev") != prev:
            return Broken(i, got, "prev is not the hash of the entry before it (an entry removed or reordered)")
        if e.get("hash") != digest(e):
            return Broken(i, got, "its hash does not match its content (the entry was edited)")
        prev, seq = e["hash"], seq + 1
    if anchor is not None:
        a_seq, a_hash = anchor
        if seq - 1 < a_seq:
            return Broken(len(lines) + 1, seq, f"the chain ends at seq {seq - 1} but its anchor says {a_seq}")
        head: dict[str, Any] = json.loads(lines[a_seq]) if a_seq < len(lines) else {}
        if head.get("hash") != a_hash:
            return Broken(a_seq + 1, a_seq, "the anchored head hash differs (the chain was rewritten)")
    return None


@dataclass(frozen=True, slots=True)
class Query:
    system: str | None = None
    actor: str | None = None
    action: str | None = None
    since: float | None = None

    def wants(self, e: dict[str, Any]) -> bool:
        return (
            (self.system is None or e.get("system") == self.system)
            and (self.actor is None or e.get("actor") == self.actor)
            and (self.action is None or e.get("action") == self.action)
            and (self.since is None or float(e.get("at", 0.0)) >= self.since)
        )


def select(entries: Iterable[dict[str, Any]], q: Query) -> list[dict[str, Any]]:
    return [e for e in entries if q.wants(e)]
