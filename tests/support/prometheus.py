"""A real Prometheus for tests: Debian's ``prometheus`` binary with a generated config.

Scrapes every second; targets can be added or replaced while it runs (``POST /-/reload``, then a
wait until ``/api/v1/targets`` shows them). ``stop()`` and ``start()`` restart it on the same port
and data directory, as tests that take Prometheus away mid-analysis need. Install the binary with
``make system-deps`` (``apt-get install -y --no-install-recommends prometheus``).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx

from tests.support.services import free_port, http_ok, stop_process, wait_until

JOB = "modship"


class PrometheusServer:
    """``prometheus`` on a free loopback port; a context manager (stop + clean up on exit)."""

    def __init__(
        self,
        targets: Iterable[str] = (),
        *,
        root: Path | None = None,
        interval: str = "1s",
        scrape_configs: Iterable[dict[str, Any]] = (),
    ) -> None:
        """``scrape_configs``: more jobs as they are, e.g. what ``modship prometheus-config`` prints."""
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed: run `make system-deps`")
        self.binary = binary
        self._tmp = None if root else tempfile.TemporaryDirectory(prefix="modship-prometheus-")
        self.root = root or Path(self._tmp.name)  # type: ignore[union-attr]
        self.root.mkdir(parents=True, exist_ok=True)
        self.config = self.root / "prometheus.yml"
        self.log = self.root / "prometheus.log"
        self.interval = interval
        self.jobs: dict[str, list[str]] = {JOB: list(targets)}
        self.more = list(scrape_configs)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, *, timeout: float = 30.0) -> PrometheusServer:
        """Start (or restart) on the same port and data dir; return once ``/-/ready`` answers 200."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self._write_config()
        cmd = [
            self.binary,
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.root / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._ready, timeout=timeout, interval=0.05, what=f"prometheus ready on {self.url}")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
        return http_ok(f"{self.url}/-/ready", timeout=0.5)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL; the data dir is kept for a restart."""
        if self.proc is not None:
            stop_process(self.proc, grace=10)

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- targets ---------------------------------------------------------------------------------

    def set_targets(self, targets: Iterable[str], *, job: str = JOB, timeout: float = 15.0) -> None:
        """Replace ``job``'s targets (``host:port``); when running, reload and wait until active."""
        self.jobs[job] = list(targets)
        if self.proc is not None and self.proc.poll() is None:
            self.reload(timeout=timeout)

    def add_targets(self, *targets: str, job: str = JOB, timeout: float = 15.0) -> None:
        self.set_targets([*self.jobs.get(job, []), *targets], job=job, timeout=timeout)

    def reload(self, *, timeout: float = 15.0) -> None:
        self._write_config()
        r = httpx.post(f"{self.url}/-/reload", timeout=5)
        if r.status_code != 200:
            raise RuntimeError(f"prometheus reload failed: {r.status_code} {r.text}")
        want = {(job, t) for job, ts in self.jobs.items() for t in ts}
        wait_until(lambda: self._active() == want, timeout=timeout, what=f"targets {sorted(want)} active")

    def _active(self) -> set[tuple[str, str]]:
        data = self.api("targets", state="active")
        return {
            (t["labels"]["job"], t["labels"]["instance"])
            for t in data["activeTargets"]
            if t["labels"]["job"] in self.jobs
        }

    def wait_targets_up(self, *, timeout: float = 15.0) -> None:
        """Until every target has been scraped successfully at least once."""

        def up() -> bool:
            targets = self.api("targets", state="active")["activeTargets"]
            return bool(targets) and all(t["health"] == "up" for t in targets)

        wait_until(up, timeout=timeout, interval=0.2, what="all targets up")

    def discovered(self, job: str) -> list[dict[str, Any]]:
        """The active targets of ``job``: ``labels`` (after relabelling), ``health``, ``scrapeUrl``."""
        return [t for t in self.api("targets", state="active")["activeTargets"] if t["labels"]["job"] == job]

    def query_range(self, query: str, *, seconds: float, step: str = "1s") -> list[dict[str, Any]]:
        """A range query over the last ``seconds`` (as Grafana runs a panel's query): its series."""
        end = time.time()
        data = self.api("query_range", query=query, start=str(end - seconds), end=str(end), step=step)
        return list(data["result"])

    def _write_config(self) -> None:
        config = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "scrape_configs": [
                *({"job_name": job, "static_configs": [{"targets": targets}]} for job, targets in self.jobs.items()),
                *self.more,
            ],
        }
        self.config.write_text(json.dumps(config, indent=2))  # JSON is YAML

    # -- queries ---------------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=5)
        body = r.json()
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus /api/v1/{path} {params}: {body}")
        return body["data"]

    def value(self, query: str) -> float | None:
        """An instant query's single value; None for an empty result or NaN."""
        data = self.api("query", query=query)
        result = data["result"]
        if data["resultType"] == "scalar":
            raw = result[1]
        elif not result:
            return None
        else:
            assert len(result) == 1, f"{query!r} returned {len(result)} series"
            raw = result[0]["value"][1]
        v = float(raw)
        return None if math.isnan(v) else v

    def wait_for_value(
        self, query: str, *, timeout: float = 30.0, until: Callable[[float], bool] = lambda v: True
    ) -> float:
        """Poll ``query`` until it returns a value (for which ``until`` holds); return it."""

        def probe() -> tuple[float] | None:
            v = self.value(query)
            return (v,) if v is not None and until(v) else None  # a tuple: 0.0 is a value too

        return wait_until(probe, timeout=timeout, interval=0.25, what=f"a value for {query!r}")[0]
