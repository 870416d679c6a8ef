"""(e) The second domain: the composed ``digit-reader`` (``examples/digits/system.yaml``: a python
component -> an ONNX PCA graph -> a scikit-learn head adopted from MLflow) against a hand-written
BentoML service calling the same model files (``bench/monolith_digits``).

The modules are built by ``examples/digits/build.py`` into a registry of their own (SQLite MLflow
under ``$MODSHIP_CACHE/bench/digits-<hash>``, with the heads logged as MLflow models there), the
component and the graph registered and head v1 adopted as in ``examples/digits/demo.py``; all of
it once, keyed by the example's files. The load POSTs ``{"image": [[...8x8...]]}`` bodies of 300
real digits (scikit-learn's ``load_digits``). The digit system has no cache, so repeats are fine.
Before the load, both services must give the same labels for a batch of images.

Goals, at every connection count: p50 composed/monolith <= 1.05, throughput >= 0.95.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml
from filelock import FileLock

from bench import load, results, setup
from controller import settings
from controller.adapters import bento, factory
from controller.apply import adopt, modules, systems
from controller.errors import ModshipError
from controller.spec import system as system_spec

TITLE = "composed digit-reader vs hand-written service (python + ONNX + MLflow sklearn)"
COMPOSED, MONOLITH = "composed digit-reader", "digits monolith"
DIGITS = setup.REPO / "examples" / "digits"
MONOLITH_SRC = Path(__file__).resolve().parent / "monolith_digits"
AGREE_TOLERANCE = 1e-4


class Workspace(setup.Workspace):
    """The digits modules in an embedded registry of their own, built and registered once."""

    def __init__(self, scratch: Path) -> None:  # not the text workspace's: another registry
        self.scratch = scratch
        h = hashlib.sha256()
        for name in ("build.py", "head-overlay.yaml", "system.yaml"):
            h.update((DIGITS / name).read_bytes())
        self.root = setup.cache_root() / f"digits-{h.hexdigest()[:16]}"
        uri = f"sqlite:///{self.root / 'mlflow.db'}"
        self.settings = settings.load(registry=uri, home=str(self.root))
        self.bentoml_home = self.root / "bentoml"
        self.lock = FileLock(str(self.root) + ".lock")
        self.root.mkdir(parents=True, exist_ok=True)
        with self.lock:
            self.registry = factory.registry(self.settings)
            if not (self.root / "registered").exists():
                self._register(uri)

    def _register(self, uri: str) -> None:
        out = self.root / "modules"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, str(DIGITS / "build.py"), "--out", str(out), "--tracking-uri", uri]
        proc = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise ModshipError(f"examples/digits/build.py failed: {proc.stderr[-2000:]}")
        modules.register(self.registry, [out / "digits-preprocess-v1", out / "digits-pca-v1"], skip_existing=True)
        overlay = adopt.read_overlay(DIGITS / "head-overlay.yaml")
        adopt.adopt(
            lambda: self.registry,
            factory.model_source(uri),
            "models:/digits-classifier/1",
            name="digits-head",
            role="head",
            overlay=overlay,
        )
        (self.root / "registered").touch()

    def spec(self) -> dict[str, Any]:
        return dict(yaml.safe_load((DIGITS / "system.yaml").read_text()))

    def monolith(self) -> Path:
        """``bench/monolith_digits`` with the same model files as the composed system, built once."""
        spec = system_spec.from_document(self.spec(), source="digit-reader")
        with self.lock:
            local = systems.check(self.registry, spec, cache=self.settings.module_cache).local
        dirs = {ref.split("@")[0]: path for ref, path in local.items()}
        params = {"digits-preprocess-v1": _manifest(dirs["digits-preprocess"])["runtime"].get("params") or {}}
        head = dirs["digits-head"]
        head_model = head / _manifest(head)["runtime"]["files"]["model"]
        files = {
            "service.py": MONOLITH_SRC / "service.py",
            "bentofile.yaml": MONOLITH_SRC / "bentofile.yaml",
            "models/pca16.onnx": dirs["digits-pca"] / "pca16.onnx",
        }
        files |= {f"models/head/{p.relative_to(head_model)}": p for p in sorted(head_model.rglob("*")) if p.is_file()}
        config = yaml.safe_dump(params, sort_keys=True).encode()
        h = hashlib.sha256(config)
        for rel in sorted(files):
            h.update(rel.encode() + files[rel].read_bytes())
        version = h.hexdigest()[:16]
        path = self.bentoml_home / "bentos" / "digits-monolith" / version
        with self.lock:
            if (path / "bento.yaml").exists():
                return path
            with tempfile.TemporaryDirectory(prefix="bench-digits-monolith-") as tmp:
                ctx = Path(tmp)
                for rel, src in files.items():
                    (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, ctx / rel)
                (ctx / "models" / "config.yaml").write_bytes(config)
                cmd = [setup.BENTOML, "build", "--version", version, str(ctx)]
                proc = subprocess.run(cmd, cwd=ctx, env=bento.env(self.bentoml_home), capture_output=True, text=True)
                if proc.returncode != 0:
                    raise ModshipError(f"bentoml build of the digits monolith failed: {proc.stderr[-2000:]}")
        return path


def _manifest(root: Path) -> dict[str, Any]:
    return dict(yaml.safe_load((root / "module.yaml").read_text()))


def images(n: int) -> list[list[list[float]]]:
    """``n`` real 8x8 digit images, always the same (the last ones of scikit-learn's digits)."""
    from sklearn.datasets import load_digits

    return [img.tolist() for img in load_digits().images[-n:]]


def agreement(urls: dict[str, str], batch: list[Any]) -> dict[str, Any]:
    answers = {
        name: httpx.post(f"{url}/predict", json={"image": batch}, timeout=60).raise_for_status().json()
        for name, url in urls.items()
    }
    a, b = (answers[n]["prediction"] for n in urls)
    diff = max(abs(x["confidence"] - y["confidence"]) for x, y in zip(a, b, strict=True))
    same = [x["label"] for x in a] == [y["label"] for y in b]
    if not same or diff > AGREE_TOLERANCE:
        raise AssertionError(f"composed and monolith disagree (same labels: {same}, max confidence diff {diff:.2g})")
    return {"images": len(batch), "same_labels": same, "max_confidence_diff": diff}


def run(ws: setup.Workspace, cfg: load.Load) -> dict[str, Any]:
    dws = Workspace(ws.scratch)
    servers = {
        COMPOSED: setup.Bento("digits-composed", dws.system(dws.spec()), ws.scratch, MODSHIP_TRACING=None),
        MONOLITH: setup.Bento("digits-monolith", dws.monolith(), ws.scratch),
    }
    imgs = images(300)
    with setup.running(*servers.values()):
        agreed = agreement({n: s.url for n, s in servers.items()}, imgs[:64])
        measured = load.side_by_side(
            {name: s.target() for name, s in servers.items()},
            load.bodies([{"image": img} for img in imgs]),
            cfg,
            scratch=ws.scratch,
        )
    checks = []
    for c in cfg.connections:
        checks.append(
            results.Check(f"p50 composed/monolith c{c}", measured.paired(COMPOSED, MONOLITH, c, "p50_ms"), "<=", 1.05)
        )
        checks.append(
            results.Check(f"req/s composed/monolith c{c}", measured.paired(COMPOSED, MONOLITH, c, "rps"), ">=", 0.95)
        )
    cpu = {f"c{c}": round(measured.paired(COMPOSED, MONOLITH, c, "cpu_ms"), 3) for c in cfg.connections}
    return results.result(
        title=TITLE,
        notes=[
            "CPU per request composed/monolith: " + ", ".join(f"{c} {v:g}" for c, v in cpu.items()),
            f"answers agree on {agreed['images']} images: labels {agreed['same_labels']},"
            f" max confidence diff {agreed['max_confidence_diff']:.2g}",
        ],
        figures={COMPOSED: measured.figures(COMPOSED)},
        baseline={MONOLITH: measured.figures(MONOLITH)},
        checks=checks,
        goal="p50 composed/monolith <= 1.05 and throughput >= 0.95 of the monolith's, at every connection count",
        host=measured.foreign(),
        cpu_per_request_ratio=cpu,
        agreement=agreed,
    )
