"""BentoML: build a revision's Bento from the composed-service template, and serve it.

Builds are offline (``lock_packages: false``) and idempotent: a revision's hash names its Bento
(``<system>:<revision>``), so building the same revision twice reuses the first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from controller import settings
from controller.adapters.malloc import MALLOC_ENV
from controller.compose import revision
from controller.compose.revision import Lock
from controller.errors import ModshipError, SpecError
from controller.pipeline import serving
from controller.pipeline.engine import module_dir
from controller.registry import requirements, signing
from controller.spec import signing as signing_spec

BENTOML = str(Path(sys.executable).parent / "bentoml")


def template_dir() -> Path:
    env = os.environ.get("MODSHIP_BENTO_TEMPLATE")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    return here.parents[2] / "bentos" / "composed"


def env(bentoml_home: Path, **extra: str) -> dict[str, str]:
    out = dict(os.environ, BENTOML_HOME=str(bentoml_home), BENTOML_DO_NOT_TRACK="true")
    out.update(extra)
    return out


def tag(lock: Lock) -> str:
    return f"{lock.name}:{lock.revision}"


def bento_path(bentoml_home: Path, lock: Lock) -> Path:
    return bentoml_home / "bentos" / lock.name / lock.revision


def exists(bentoml_home: Path, lock: Lock) -> bool:
    return (bento_path(bentoml_home, lock) / "bento.yaml").exists()


def build(
    lock: Lock, modules: dict[str, Path], *, bentoml_home: Path, policy: signing_spec.SigningPolicy | None = None
) -> str:
    """Build (or reuse) the Bento for a locked revision; ``modules`` maps refs to verified dirs.
    Signatures are checked against ``policy`` (default: the one ``MODSHIP_HOME`` holds) first,
    also when the Bento exists; the policy travels in the Bento so its server checks them at load."""
    policy = policy if policy is not None else signing_spec.load(settings.load().signing_file)
    for ref, src in sorted(modules.items()):
        signing.check(src, policy, what=ref)
    if exists(bentoml_home, lock):
        return tag(lock)
    template = template_dir() / "service.py"
    if not template.exists():
        raise SpecError(f"service template not found at {template} (set MODSHIP_BENTO_TEMPLATE)")
    with tempfile.TemporaryDirectory(prefix="modship-build-") as tmp:
        ctx = Path(tmp)
        shutil.copyfile(template, ctx / "service.py")
        revision.write(lock, ctx / serving.LOCK_FILE)
        for ref, src in modules.items():
            _link_tree(src, module_dir(ctx / serving.MODULES_DIR, ref))
        if policy.active:
            serving.write_signing(ctx, policy)
        bentofile = {
            "service": "service:ModshipSystem",
            "name": lock.name,
            "description": f"modship system {lock.name}, revision {lock.revision}",
            "labels": lock.labels(),
            "include": ["service.py", serving.LOCK_FILE, f"{serving.MODULES_DIR}/**", f"{serving.SIGNING_DIR}/**"],
            "python": _python(lock),
        }
        (ctx / "bentofile.yaml").write_text(yaml.safe_dump(bentofile, sort_keys=False))
        bentoml_home.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [BENTOML, "build", "--version", lock.revision, str(ctx)],
            cwd=ctx,
            env=env(bentoml_home),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ModshipError(f"bentoml build failed for {tag(lock)}: {detail[0]}")
    return tag(lock)


def _python(lock: Lock) -> dict[str, object]:
    """The Bento's Python section: the union of its modules' requirements (not locked: builds are
    offline; a container build installs them)."""
    needs = [(ref, r) for ref, m in lock.modules.items() for r in m.manifest.runtime.requirements]
    section: dict[str, object] = {"lock_packages": False}
    if needs:
        section["packages"] = requirements.union(needs)
    return section


def _link_tree(src: Path, dest: Path) -> None:
    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dest, copy_function=link)


def delete(bentoml_home: Path, lock: Lock) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(bento_path(bentoml_home, lock))


def serve_command(bento_dir: Path, *, host: str, port: int) -> list[str]:
    """Serve a built Bento by path. Run it with a private ``BENTOML_HOME`` (``serve_env``): BentoML
    keeps its Prometheus multiprocess directory there and wipes it whenever a server starts, so two
    servers sharing a home would clobber each other's metrics."""
    return [BENTOML, "serve", str(bento_dir), "--host", host, "--port", str(port)]


def serve_env(private_home: Path, **extra: str) -> dict[str, str]:
    private_home.mkdir(parents=True, exist_ok=True)
    return env(private_home, **{k: v for k, v in MALLOC_ENV.items() if k not in os.environ}, **extra)


class BentoStore:
    """The ``Bentos`` port over one BentoML home."""

    def __init__(self, bentoml_home: Path) -> None:
        self.home = bentoml_home

    def build(self, lock: Lock, modules: dict[str, Path]) -> str:
        return build(lock, modules, bentoml_home=self.home)

    def path(self, lock: Lock) -> Path:
        return bento_path(self.home, lock)
