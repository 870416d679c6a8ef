"""Prometheus file-based service discovery for the local runtime.

The local controller publishes what there is to scrape in ``$MODSHIP_HOME/prometheus/targets.json``
(the ``file_sd_configs`` format: a list of ``{"targets": ["host:port"], "labels": {...}}``), written
atomically and only when it changes: after every cycle that started or stopped a revision or a
router, or moved a revision's role. Prometheus watches the file, so a user's Prometheus finds every
revision, router and the controller without hand-copied ports.

Labels: ``kind`` (``service``: a revision's BentoML server; ``router``; ``controller``), ``system``,
``revision`` and ``role`` (``stable``, ``canary``, ``previous``: the warm previous stable during the
rollback window). The services' and the router's own metrics already carry ``system`` and
``revision`` (the router's also ``role``, per series): scrape with ``honor_labels: true`` so that
those win and no ``exported_*`` copies appear (``scrape_config`` does).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from controller import atomic
from controller.ports import SystemUnits

FILE = Path("prometheus") / "targets.json"
JOB = "modship"


def groups(systems: Sequence[SystemUnits], *, controller: str | None, scheme: str = "http") -> list[dict[str, Any]]:
    """The target groups, one per unit, in a stable order (so an unchanged world writes nothing)."""
    out: list[dict[str, Any]] = []
    if controller is not None:
        labels = {"kind": "controller"} | ({"__scheme__": scheme} if scheme != "http" else {})
        out.append({"targets": [controller], "labels": labels})
    for s in sorted(systems, key=lambda x: x.system):
        if s.router is not None:
            out.append({"targets": [f"127.0.0.1:{s.router}"], "labels": {"kind": "router", "system": s.system}})
        for rev, port in sorted(s.revisions.items()):
            labels = {"kind": "service", "system": s.system, "revision": rev}
            role = _role(s, rev)
            if role is not None:
                labels["role"] = role
            out.append({"targets": [f"127.0.0.1:{port}"], "labels": labels})
    return out


def _role(s: SystemUnits, rev: str) -> str | None:
    if rev == s.canary:
        return "canary"
    if rev == s.stable:
        return "stable"
    if rev == s.previous:
        return "previous"
    return None


class Publisher:
    """Writes the file when what it would say changed (one controller writes it)."""

    def __init__(self, home: Path) -> None:
        self.path = home / FILE
        self._last: str | None = None

    def publish(self, units: list[SystemUnits], *, controller: str | None, scheme: str = "http") -> bool:
        """Publish what ``units`` run (and the controller's API); True when the file changed."""
        return self.write(groups(units, controller=controller, scheme=scheme))

    def write(self, target_groups: list[dict[str, Any]]) -> bool:
        text = json.dumps(target_groups, indent=1, sort_keys=True)
        if text == self._last and self.path.exists():
            return False
        atomic.write_text(self.path, text + "\n")
        self._last = text
        return True


def scrape_config(home: Path, *, interval: str = "5s", job: str = JOB) -> str:
    """A ready ``prometheus.yml`` scraping everything the local runtime publishes."""
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": job,
                "honor_labels": True,
                "file_sd_configs": [{"files": [str(home / FILE)], "refresh_interval": "5s"}],
            }
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)
