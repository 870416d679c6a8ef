"""Governance state of the local runtime, beside the rollout state:

    $MODSHIP_HOME/policy.yaml                 the Policy (``modship policy set``; no file: no rules)
    $MODSHIP_HOME/systems/<name>/change.json   the change in flight: its author, reason, break-glass
    $MODSHIP_HOME/systems/<name>/approvals.jsonl   approvals and rejections, one per line

Approvals are appended (O_APPEND, fsynced), so two approvers at once never lose one another's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from controller import atomic
from controller.plan.governance import Approval, Change
from controller.spec import policy as policy_spec
from controller.spec.policy import Policy


class LocalGovernance:
    def __init__(self, home: Path) -> None:
        self.home = home

    @property
    def policy_path(self) -> Path:
        return self.home / "policy.yaml"

    def policy(self) -> Policy:
        if not self.policy_path.exists():
            return Policy()
        return policy_spec.from_document(yaml.safe_load(self.policy_path.read_text()), source=str(self.policy_path))

    def set_policy(self, p: Policy) -> None:
        atomic.write_text(self.policy_path, yaml.safe_dump(p.dump(), sort_keys=False))

    def _dir(self, system: str) -> Path:
        return self.home / "systems" / system

    def change(self, system: str) -> Change | None:
        path = self._dir(system) / "change.json"
        return Change.from_storage(json.loads(path.read_text())) if path.exists() else None

    def put_change(self, system: str, change: Change) -> None:
        atomic.write_text(self._dir(system) / "change.json", json.dumps(change.for_storage(), indent=1))

    def approvals(self, system: str, revision: str) -> tuple[Approval, ...]:
        path = self._dir(system) / "approvals.jsonl"
        if not path.exists():
            return ()
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        return tuple(
            Approval(r["user"], bool(r["approve"]), float(r["at"]), r.get("reason") or "")
            for r in rows
            if r.get("revision") == revision
        )

    def add_approval(self, system: str, revision: str, a: Approval) -> None:
        line = json.dumps({"revision": revision, "user": a.user, "approve": a.approve, "at": a.at, "reason": a.reason})
        fd = os.open(self._dir(system) / "approvals.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
