"""The one atomic-write helper and the one backoff formula."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from controller import atomic, backoff


def test_a_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "status.json"
    atomic.write_text(path, "one")
    atomic.write_text(path, "two")
    assert path.read_text() == "two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["status.json"]


def test_concurrent_writers_never_share_a_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "controls.json"
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for _ in range(50):
                atomic.write_text(path, f"writer {i} " * 100)
        except BaseException as exc:  # a shared temporary name fails here (FileNotFoundError)
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert path.read_text() in {f"writer {i} " * 100 for i in range(4)}  # whole: one writer's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["controls.json"]


def test_the_file_keeps_its_permissions(tmp_path: Path) -> None:
    path = tmp_path / "deploy.sh"
    path.write_text("old")
    os.chmod(path, 0o750)
    atomic.write_text(path, "new")
    assert path.stat().st_mode & 0o777 == 0o750


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "rollout.yaml"
    atomic.write_text(path, "old")

    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_text(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rollout.yaml"]


@pytest.mark.parametrize(
    ("failures", "kw", "expected"),
    [
        (0, {"first": 2.0, "cap": 30.0}, 0.0),
        (1, {"first": 2.0, "cap": 30.0}, 2.0),
        (3, {"first": 2.0, "cap": 30.0}, 8.0),
        (10, {"first": 2.0, "cap": 30.0}, 30.0),
        (1, {"first": 0.5, "cap": 5.0}, 0.5),
        (20, {"first": 0.2, "cap": 30.0, "doublings": 5}, 6.4),
    ],
)
def test_backoff_doubles_up_to_its_cap(failures: int, kw: dict[str, float], expected: float) -> None:
    assert backoff.delay(failures, **kw) == pytest.approx(expected)  # type: ignore[arg-type]
