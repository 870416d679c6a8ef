"""The operator's load-test hooks (``LoadTests``, around the local controller's ``LoadRunner``): one per
rollout, running while its canary is in flight and only then, restarted when its spec or target
changes, a dataset that cannot be read reported once and not retried; against a real local receiver."""

from __future__ import annotations

from pathlib import Path

from controller.adapters.kube.names import service_url
from controller.adapters.loadtest import LoadTests
from controller.spec.rollout import LoadTest
from tests.support.receiver import receiving


def test_the_system_service_is_the_target() -> None:
    assert service_url("topic", "ml", 3000) == "http://topic.ml.svc:3000"


def test_a_hook_runs_while_asked_and_stops(tmp_path: Path) -> None:
    (tmp_path / "requests.jsonl").write_text('{"text": "a"}\n')
    spec = LoadTest(dataset="requests.jsonl", rate=50)
    loads = LoadTests(tmp_path)
    with receiving() as rec:
        base = rec.url.removesuffix("/hook")
        running, message = loads.sync(("ns", "sys"), spec, base) or (False, "")
        assert running and message == f"replaying 1 request(s) at 50/s to {base}/predict"
        rec.wait_for(3, timeout=10)
        assert loads.sync(("ns", "sys"), spec, base) == (True, message)  # the same runner, not another
        assert loads.sync(("ns", "sys"), None, base) is None  # the canary is no longer in flight
        sent = len(rec.requests)
        assert loads.sync(("ns", "sys"), None, base) is None
        assert len(rec.requests) == sent  # stopped (sync returns after the runner's thread ended)
        faster = LoadTest(dataset="requests.jsonl", rate=100)
        assert loads.sync(("ns", "sys"), faster, base) == (True, f"replaying 1 request(s) at 100/s to {base}/predict")
        rec.wait_for(sent + 2, timeout=10)
        loads.close()
        after = len(rec.requests)
    assert after >= sent + 2


def test_an_unreadable_dataset_is_reported_not_retried(tmp_path: Path) -> None:
    loads = LoadTests(tmp_path)
    spec = LoadTest(dataset="absent.jsonl")
    running, message = loads.sync(("ns", "sys"), spec, "http://127.0.0.1:9") or (True, "")
    assert not running and "spec.loadTest.dataset" in message and "cannot read" in message
    (tmp_path / "absent.jsonl").write_text('{"text": "a"}\n')  # not read again for the same spec
    assert loads.sync(("ns", "sys"), spec, "http://127.0.0.1:9") == (False, message)
    loads.stop(("ns", "sys"))  # forgotten: a later cycle tries again
    shown = loads.sync(("ns", "sys"), spec, "http://127.0.0.1:9")
    loads.close()
    assert shown is not None and shown[0]
