"""Systems whose steps run text-guard modules, some isolated in worker processes, some faulty.

A text guard needs no weights, so a worker starts fast; its output is its (checked) input, so a
step's answer shows which module produced it only through the outcome's ``fallbacks``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from controller.compose import revision
from controller.pipeline import faults
from controller.pipeline.engine import Pipeline, module_dir
from controller.registry import digests
from controller.registry.versions import ModuleVersion
from controller.spec import system as system_spec
from controller.spec.modules import ModuleManifest
from tests.support import modules

TEXTS = [f"request number {i} about the markets" for i in range(200)]


def guard(name: str, *, stability: str = "stable", **runtime: Any) -> dict[str, Any]:
    text = {"text": modules.port("string")}
    m = modules.manifest(name, "guard", text, text, kind="text-guard", stability=stability)
    m["runtime"].update(runtime)
    return m


def alive(pid: int) -> bool:
    """The process runs (a zombie, waiting for a parent to reap it, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def pick(salt: str, rate: float, *, crashing: bool, texts: Iterable[str] = TEXTS) -> str:
    """An input on which a module named ``salt`` with ``crashRate: rate`` crashes (or does not)."""
    return next(t for t in texts if (faults.draw({"text": [t]}, salt + ":crash") < rate) is crashing)


def pipeline(
    root: Path,
    manifests: dict[str, dict[str, Any]],
    steps: list[dict[str, Any]],
    *,
    files: dict[str, dict[str, str]] | None = None,
    spec: dict[str, Any] | None = None,
    **kw: Any,
) -> Pipeline:
    """Write the module directories under ``root`` (``module.yaml`` and ``files[ref]``), lock the
    system (``spec``: more of its spec) and load it (digests verified)."""
    resolved = {}
    for ref, m in manifests.items():
        d = module_dir(root, ref)
        d.mkdir(parents=True, exist_ok=True)
        (d / "module.yaml").write_text(yaml.safe_dump(m))
        for name, text in (files or {}).get(ref, {}).items():
            (d / name).write_text(text)
        files = digests.manifest(d)
        name, version = ref.split("@")
        resolved[ref] = ModuleVersion(
            name=name,
            version=int(version),
            manifest=ModuleManifest.model_validate(m),
            digest=digests.combined(files),
            files=files,
            source=str(d),
        )
    system = system_spec.from_document(modules.system_doc(steps, **(spec or {})))
    lock = revision.pin(system, {ref: resolved[ref] for ref in revision.refs_of(system)})
    return Pipeline.load(lock, root, **kw)


class Recorder:
    """Telemetry that keeps step errors and fallbacks: ``("error", step, module, reason)``..."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def span(self, name: str, attributes: dict[str, Any]) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def step(self, step: str, module: str, seconds: float, *, error: str | None) -> None:
        if error:
            self.events.append(("error", step, module, error))

    def fallback(self, step: str, module: str, reason: str) -> None:
        self.events.append(("fallback", step, module, reason))

    def cache(self, step: str, module: str, *, hit: bool) -> None: ...
    def prediction(self, step: str, module: str, label: str, confidence: float) -> None: ...
    def evaluation(self, step: str, module: str, *, passed: bool) -> None: ...
    def request(self, seconds: float, outcome: str, input_chars: list[int]) -> None: ...
