"""What the composed Bento runs: load a locked system from its bundle directory and answer requests.

A bundle directory holds ``modship.lock.yaml`` and ``modules/<name>-<version>/``. Loading verifies
every file's digest against the lock and refuses to start on a mismatch; when the bundle carries a
signing policy (``signing/``, written at build), every module's signature is verified too.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.compose import revision
from controller.compose.revision import Lock
from controller.pipeline.engine import Outcome, Pipeline, module_dir
from controller.pipeline.response_cache import ResponseCache
from controller.pipeline.telemetry import PrometheusTelemetry
from controller.registry import digests, signing
from controller.spec import signing as signing_spec

LOCK_FILE = "modship.lock.yaml"
MODULES_DIR = "modules"
SIGNING_DIR = "signing"


def read_lock(bundle: Path) -> Lock:
    return revision.load(bundle / LOCK_FILE)


@dataclass
class App:
    lock: Lock
    pipeline: Pipeline
    started: float
    response_cache: ResponseCache | None = None

    @property
    def ready(self) -> bool:
        return True

    def predict(
        self, inputs: Mapping[str, Any], headers: Mapping[str, str], *, request_key: str | None = None
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        outcome = self.pipeline.predict(inputs, headers=headers, request_key=request_key)
        return response(self.lock, outcome, (time.perf_counter() - t0) * 1000)


def verify(bundle: Path, lock: Lock) -> None:
    """Check every module file against the lock's digests (IntegrityError names the file)."""
    for ref, m in lock.modules.items():
        digests.verify(module_dir(bundle / MODULES_DIR, ref), m.files, what=ref)


def write_signing(bundle: Path, policy: signing_spec.SigningPolicy) -> None:
    """Copy the policy and its trusted public keys into the bundle (for ``check_signatures``)."""
    root = bundle / SIGNING_DIR
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i, key in enumerate(policy.trusted_keys):
        (root / f"key-{i}.pem").write_bytes(key.read_bytes())
        names.append(f"key-{i}.pem")
    doc = {"requireSignature": policy.require_signature, "trustedKeys": names}
    (root / "policy.json").write_text(json.dumps(doc, indent=2))


def check_signatures(bundle: Path, lock: Lock) -> None:
    """Verify every module's signature when the bundle carries a signing policy (SignatureError)."""
    path = bundle / SIGNING_DIR / "policy.json"
    if not path.exists():
        return
    policy = signing_spec.load(path)
    for ref in lock.modules:
        signing.check(module_dir(bundle / MODULES_DIR, ref), policy, what=ref)


def load(bundle: Path, *, verify: bool = True) -> App:
    lock = read_lock(bundle)
    if verify:
        check_signatures(bundle, lock)
    flags_file = os.environ.get("MODSHIP_FLAGS_FILE")
    pipeline = Pipeline.load(
        lock,
        bundle / MODULES_DIR,
        verify=verify,
        telemetry=PrometheusTelemetry(lock.name, lock.revision),
        flags_file=Path(flags_file) if flags_file else None,
    )
    cache = ResponseCache.of(lock.system.spec.cache, lock.name, lock.revision)
    return App(lock=lock, pipeline=pipeline, started=time.time(), response_cache=cache)


def response(lock: Lock, outcome: Outcome, ms: float) -> dict[str, Any]:
    body: dict[str, Any] = {"outputs": outcome.outputs}
    if outcome.prediction is not None:
        body["prediction"] = outcome.prediction
    if outcome.evaluation is not None:
        body["evaluation"] = outcome.evaluation
    body["meta"] = {
        "system": lock.name,
        "revision": lock.revision,
        "modules": {name: info["module"] for name, info in outcome.steps.items()},
        "fallbacks": outcome.fallbacks,
        "cached": sorted(n for n, i in outcome.steps.items() if i.get("cached")),
        "skipped": sorted(n for n, i in outcome.steps.items() if i.get("skipped")),
        "flags": outcome.flags,
        "overBudget": outcome.over_budget,
        "latencyMs": round(ms, 3),
    }
    return body
