"""The built-in load-test hook against a real HTTP receiver: paced, in order and round again, and a
bad dataset named by its line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from controller.adapters.loadtest import LoadRunner, read_dataset
from controller.errors import SpecError
from controller.spec.rollout import LoadTest
from tests.support.receiver import receiving


def test_the_dataset_is_replayed_at_the_rate_in_order(tmp_path: Path) -> None:
    (tmp_path / "requests.jsonl").write_text('{"text": "a"}\n\n{"text": "b"}\n{"text": "c"}\n')
    spec = LoadTest(dataset="requests.jsonl", rate=20, path="/predict", headers={"x-user-id": "7"})
    with receiving() as rec:
        runner = LoadRunner(spec, rec.url.removesuffix("/hook"), home=tmp_path).start()
        t0 = time.monotonic()
        rec.wait_for(20, timeout=10)
        took = time.monotonic() - t0
        runner.stop()
        sent = len(rec.requests)
    assert 0.8 < took < 3.0, took  # 20 requests at 20/s: about a second (generous: a shared machine)
    assert [r.json()["text"] for r in rec.requests[:4]] == ["a", "b", "c", "a"]
    first = rec.requests[0]
    assert (
        first.path == "/predict" and first.headers["x-user-id"] == "7" and first.headers["x-modship-load-test"] == "1"
    )
    time.sleep(0.3)  # after stop nothing more is sent (a pause to observe an absence, not to synchronise)
    assert len(rec.requests) == sent and runner.ok == runner.sent == sent


def test_a_bad_dataset_is_refused_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(SpecError, match=r"spec.loadTest.dataset: .*bad.jsonl line 2 is not JSON"):
        read_dataset(path)
    path.write_text("\n\n")
    with pytest.raises(SpecError, match="holds no request"):
        read_dataset(path)
    with pytest.raises(SpecError, match="cannot read"):
        read_dataset(tmp_path / "absent.jsonl")
