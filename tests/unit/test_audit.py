"""The audit log: a hash chain on disk that detects an edited, a removed and a reordered entry."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

from controller.adapters.audit_log import AuditLog
from controller.plan import audit


def _log(tmp_path: Path, n: int = 5) -> AuditLog:
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(n):
        log.append({"at": float(i), "actor": "alice" if i % 2 else "bob", "action": "promote", "system": f"s{i % 2}",
                    "reason": f"change {i}", "before": None, "after": {"revision": f"r{i}"}})  # fmt: skip
    return log


def _rewrite(log: AuditLog, lines: list[str]) -> None:
    log.path.write_text("".join(x + "\n" for x in lines))


def test_an_intact_chain_verifies_and_links_every_entry(tmp_path: Path) -> None:
    log = _log(tmp_path)
    assert log.verify() is None
    entries = log.entries()
    assert [e["seq"] for e in entries] == [0, 1, 2, 3, 4]
    assert entries[0]["prev"] == audit.GENESIS
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(entries))
    assert log.anchor() == (4, entries[-1]["hash"])


def test_an_edited_entry_is_detected(tmp_path: Path) -> None:
    log = _log(tmp_path)
    lines = log.lines()
    e = json.loads(lines[2])
    e["actor"] = "mallory"
    lines[2] = json.dumps(e, sort_keys=True)
    _rewrite(log, lines)
    broken = log.verify()
    assert broken is not None and broken.line == 3 and broken.seq == 2 and "edited" in broken.why


def test_a_removed_entry_is_detected(tmp_path: Path) -> None:
    log = _log(tmp_path)
    lines = log.lines()
    _rewrite(log, lines[:1] + lines[2:])
    broken = log.verify()
    assert broken is not None and broken.line == 2 and "removed" in broken.why


def test_a_reordered_entry_is_detected(tmp_path: Path) -> None:
    log = _log(tmp_path)
    lines = log.lines()
    lines[1], lines[3] = lines[3], lines[1]
    _rewrite(log, lines)
    broken = log.verify()
    assert broken is not None and broken.line == 2


def test_an_entry_cut_from_the_end_is_detected_by_the_anchor(tmp_path: Path) -> None:
    log = _log(tmp_path)
    _rewrite(log, log.lines()[:-1])
    assert audit.verify(log.lines()) is None  # the chain alone cannot tell
    broken = log.verify()
    assert broken is not None and "anchor" in broken.why


def test_a_rehashed_edit_is_caught_by_the_next_entry(tmp_path: Path) -> None:
    """Recomputing the edited entry's own hash does not help: the next entry names the old one."""
    log = _log(tmp_path)
    lines = log.lines()
    e = json.loads(lines[1])
    e["reason"] = "nothing to see"
    e["hash"] = audit.digest(e)
    lines[1] = json.dumps(e, sort_keys=True)
    _rewrite(log, lines)
    broken = log.verify()
    assert broken is not None and broken.line == 3


def test_garbage_is_named(tmp_path: Path) -> None:
    log = _log(tmp_path, 2)
    _rewrite(log, [*log.lines(), "{not json"])
    broken = log.verify()
    assert broken is not None and broken.line == 3 and broken.why == "not JSON"


def test_concurrent_appends_keep_one_chain(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")

    def write(who: str) -> None:
        mine = AuditLog(log.path)  # separate objects, as separate processes would have
        for i in range(20):
            mine.append({"actor": who, "action": "toggle", "at": float(i)})

    threads = [threading.Thread(target=write, args=(u,)) for u in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.verify() is None and len(log.lines()) == 60


def test_select_filters_by_system_actor_action_and_time(tmp_path: Path) -> None:
    entries = _log(tmp_path).entries()
    assert [e["seq"] for e in audit.select(entries, audit.Query(system="s1"))] == [1, 3]
    assert [e["seq"] for e in audit.select(entries, audit.Query(actor="bob", since=1.5))] == [2, 4]
    assert audit.select(entries, audit.Query(action="approve")) == []


def test_a_registration_is_audited_under_the_os_user(tmp_path: Path) -> None:
    import getpass

    from controller import settings
    from controller.entrypoints.cli_governance import record_registration

    cfg = settings.Settings(home=tmp_path, registry_uri="memory:")
    record_registration(cfg, [])  # nothing registered: nothing written
    assert not (tmp_path / "audit.jsonl").exists()
    record_registration(cfg, ["text-encoder@1", "topic-head@2"])
    (e,) = AuditLog(tmp_path / "audit.jsonl").entries()
    assert (e["action"], e["actor"], e["after"]) == (
        "register",
        getpass.getuser(),
        {"modules": ["text-encoder@1", "topic-head@2"]},
    )


def test_appending_after_a_damaged_last_entry_is_refused_not_chained(tmp_path: Path) -> None:
    import pytest

    from controller.errors import IntegrityError

    log = _log(tmp_path, 2)
    _rewrite(log, [*log.lines(), '{"seq": 2'])
    with pytest.raises(IntegrityError, match="last entry is damaged"):
        log.append({"action": "toggle"})
    assert len(log.lines()) == 3
