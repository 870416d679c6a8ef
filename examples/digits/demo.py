"""Bring your own modules, end to end, on the embedded default: a second modality (images).

    make demo-digits     (or: python examples/digits/demo.py [--home DIR] [--port 8081])

1. a team's script trains scikit-learn heads and logs them to MLflow (the embedded SQLite store),
   as any team already does; it also writes an ONNX graph and a python component as module folders;
2. modship registers the ONNX and python modules and *adopts* the MLflow models (contract from the
   signature + a small overlay with meaning), each loaded and checked before it is registered;
3. the system is validated, contract-tested and deployed behind its router with steady traffic of
   real digit images;
4. a better head is promoted as a canary; a head trained on misaligned labels is caught on mirrored
   traffic (its answers disagree with stable's) and rolled back — no client request fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.rule import Rule
from rich.table import Table

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from examples import demo as main_demo  # noqa: E402
from examples.demo import MODSHIP, Demo, console  # noqa: E402

HERE = REPO / "examples" / "digits"
SYSTEM = "digit-reader"


def script(d: Demo) -> None:
    registry = f"sqlite:///{d.home / 'mlflow.db'}"
    d.env["MODSHIP_REGISTRY"] = registry
    console.print(Rule("1 · a team's own models: scikit-learn heads logged to MLflow, an ONNX graph, a component"))
    report = json.loads(
        subprocess.run(
            [sys.executable, str(HERE / "build.py"), "--out", str(d.home / "modules"), "--tracking-uri", registry],
            env=d.env,
            cwd=d.home,  # a SQLite store puts new experiments' artifacts under ./mlruns
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    acc = Table("digits-classifier (MLflow)", "held-out accuracy", "disagrees with v1", box=None)
    for v in (1, 2, 3):
        dis = report.get(f"head v{v} disagrees with v1")
        acc.add_row(f"version {v}", f"{report[f'head v{v} accuracy']:.3f}", "-" if dis is None else f"{dis:.2f}")
    console.print(acc)

    console.print(Rule("2 · register the ONNX graph and the python component; adopt the MLflow models"))
    d.run(
        "module",
        "register",
        str(d.home / "modules" / "digits-preprocess-v1"),
        str(d.home / "modules" / "digits-pca-v1"),
    )
    for v in (1, 2, 3):
        d.run(
            "module", "adopt", f"models:/digits-classifier/{v}", "--name", "digits-head",
            "--overlay", str(HERE / "head-overlay.yaml"),
        )  # fmt: skip
    d.run("module", "show", "digits-head@1")
    d.run("system", "validate", str(HERE / "system.yaml"))

    console.print(Rule("3 · the controller, the system behind its router, steady traffic of digit images"))
    bodies = d.home / "bodies.json"
    from sklearn.datasets import load_digits

    bodies.write_text(json.dumps([{"image": img.tolist()} for img in load_digits().images[-300:]]))
    d.spawn([MODSHIP, "up"], "controller.log")
    d.wait(
        "the controller to start",
        lambda: (
            (d.home / "controller.json").exists()
            and subprocess.run([MODSHIP, "status", "none"], env=d.env, capture_output=True).returncode == 3
        ),
    )
    d.run("deploy", str(HERE / "system.yaml"), "--rollout", str(HERE / "rollout.yaml"), "--port", str(d.port))
    d.wait("the stable revision to serve", lambda: _answers(f"http://127.0.0.1:{d.port}/predict", bodies))
    report_file = d.home / "load.json"
    d.spawn(
        [sys.executable, str(REPO / "examples" / "loadgen.py"), "--url", f"http://127.0.0.1:{d.port}",
         "--rate", "25", "--bodies", str(bodies), "--report", str(report_file)],
        "load.log",
    )  # fmt: skip
    d.wait("traffic", lambda: json.loads(report_file.read_text())["requests"] > 20)

    results = {
        "better head (digits-head@2)": d.rollout("4 · promote a better head", "digits-head@2"),
        "head on misaligned labels (digits-head@3)": d.rollout(
            "5 · promote a head trained on misaligned labels", "digits-head@3"
        ),
    }
    console.print(Rule("6 · timeline"))
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
    if list(results.values()) != [0, 1] or load["failed"]:
        raise SystemExit("demo: the outcomes differ from what the demo expects (see above)")


def _answers(url: str, bodies: Path) -> bool:
    import httpx

    try:
        return httpx.post(url, json=json.loads(bodies.read_text())[0], timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=REPO / ".modship" / "demo-digits")
    ap.add_argument("--port", type=int, default=8081)
    args = ap.parse_args()
    if args.home.exists():
        shutil.rmtree(args.home)
    args.home.mkdir(parents=True)
    d = Demo(args.home.resolve(), main_demo.free(args.port), SYSTEM)
    try:
        script(d)
    finally:
        d.stop()


if __name__ == "__main__":
    main()
