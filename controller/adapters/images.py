"""Container images of revisions (``modship image build``), built with the docker CLI and no registry.

Two layers, so a revision costs seconds once the runtime exists:

* the **runtime** ``modship.local/runtime:<h12>``: a Python base (the debootstrapped
  ``modship.local/python-base:bookworm`` by default, or ``python:3.11-slim-bookworm`` where a registry is
  reachable) plus a venv with what a served Bento imports: BentoML and modship's serving dependencies at
  pyproject's pins, the modules' own requirements, every other version pinned to this environment's.
  ``h12`` hashes all of that, so it is built once per dependency set. The wheels are made on this host
  (``pip wheel``, the host's pip configuration): the build itself fetches nothing.
* the **revision** ``REPOSITORY:<revision>``: the runtime plus modship's ``controller`` package and the
  built Bento, owned by root and run as 65532, serving ``bentoml serve`` on the Kubernetes workload's
  port with ``/readyz`` and ``/livez`` (what ``adapters.kube.target`` probes). The module digests are
  checked when the server starts, in the image as anywhere.

Not ``bentoml containerize``: its generated Dockerfile names a ``# syntax=`` BuildKit frontend that is
pulled from Docker Hub, and installs uv and the packages from an index inside the build.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from controller.errors import ModshipError, NotFound, SpecError, Unavailable

DEFAULT_BASE = "modship.local/python-base:bookworm"
RUNTIME_REPOSITORY = "modship.local/runtime"
BENTO_DIR = "/home/bento/bento"
SITE = "/opt/modship/lib/python3.11/site-packages"
USER = "65532:65532"
# What a served Bento imports (bentos/composed/service.py -> controller.pipeline), at pyproject's pins.
SERVING = frozenset({
    "bentoml", "numpy", "onnxruntime", "tokenizers", "model-signing", "pyopenssl", "orjson", "uvloop", "httptools",
    "pyyaml", "filelock", "packaging", "prometheus-client", "tenacity", "httpx", "pydantic", "starlette", "uvicorn",
    "rich", "opentelemetry-sdk",
})  # fmt: skip
# A docker image reference: [registry[:port]/]path[:tag]; lowercase path, a tag of at most 128 characters.
REFERENCE = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[0-9]+)?/)?[a-z0-9]+(?:[._/-][a-z0-9]+)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
)

RUNTIME_DOCKERFILE = """\
ARG BASE
FROM ${BASE} AS build
COPY wheels/ /wheels/
RUN python3 -m venv /opt/modship \\
 && /opt/modship/bin/pip install --no-index --find-links /wheels --no-cache-dir --no-compile \\
      -r /wheels/requirements.txt \\
 && /opt/modship/bin/pip uninstall -q -y pip \\
 && /opt/modship/bin/python -m compileall -q -j 0 /opt/modship/lib

FROM ${BASE}
COPY --from=build /opt/modship /opt/modship
ENV PATH=/opt/modship/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp \\
    MODSHIP_HOME=/tmp/modship BENTOML_HOME=/tmp/bentoml BENTOML_DO_NOT_TRACK=true
WORKDIR /tmp
USER 65532:65532
"""

REVISION_DOCKERFILE = """\
FROM {runtime}
USER 0:0
COPY controller/ {site}/controller/
COPY bento/ {bento}/
RUN python -m compileall -q {site}/controller {bento} && chmod -R a+rX,go-w {site}/controller {bento}
LABEL dev.modship.system="{system}" dev.modship.revision="{revision}" dev.modship.runtime="{runtime}"
USER {user}
EXPOSE {port}
CMD ["bentoml", "serve", "{bento}", "--host", "0.0.0.0", "--port", "{port}"]
"""


@dataclass(frozen=True, slots=True)
class Built:
    image: str
    runtime: str
    size: int  # bytes, as docker reports it


def check_reference(ref: str, field: str) -> str:
    """``ref`` as a tagged image reference, never ``:latest`` (pods use IfNotPresent)."""
    if not REFERENCE.match(ref):
        raise SpecError(f"{ref!r} is not an image reference REPOSITORY:TAG (lowercase repository)", field=field)
    if ref.endswith(":latest"):
        raise SpecError(f"{ref!r}: never :latest (pods pull IfNotPresent); tag by revision", field=field)
    return ref


class Docker:
    """The docker CLI (DOCKER_HOST as set; the legacy builder unless DOCKER_BUILDKIT is set)."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or shutil.which("docker") or "docker"
        self.env = {**os.environ, "DOCKER_BUILDKIT": os.environ.get("DOCKER_BUILDKIT", "0")}

    def run(self, *args: str, timeout: float = 120) -> str:
        try:
            p = subprocess.run(
                [self.binary, *args], capture_output=True, text=True, env=self.env, timeout=timeout, check=False
            )
        except FileNotFoundError:
            raise Unavailable("docker CLI not found (install docker; tools/kind/host-setup.sh)") from None
        except subprocess.TimeoutExpired:
            raise Unavailable(f"docker {args[0]} took longer than {timeout:g}s") from None
        if p.returncode != 0:
            lines = [ln for ln in (p.stderr or p.stdout).strip().splitlines() if ln.strip()]
            raise ModshipError(f"docker {args[0]} failed: {lines[-1] if lines else f'exit {p.returncode}'}")
        return p.stdout

    def ping(self) -> None:
        try:
            self.run("version", "--format", "{{.Server.Version}}", timeout=20)
        except ModshipError as exc:
            host = os.environ.get("DOCKER_HOST", "the default socket")
            raise Unavailable(f"no docker daemon answers at {host}: {exc}") from None

    def image_id(self, ref: str) -> str | None:
        try:
            return self.run("image", "inspect", "--format", "{{.Id}}", ref, timeout=30).strip() or None
        except ModshipError:
            return None

    def size(self, ref: str) -> int:
        return int(self.run("image", "inspect", "--format", "{{.Size}}", ref, timeout=30).strip())

    def build(self, ctx: Path, tag: str, *build_args: str, timeout: float = 1800) -> None:
        args = [a for kv in build_args for a in ("--build-arg", kv)]
        self.run("build", "--force-rm", "-q", *args, "-t", tag, str(ctx), timeout=timeout)


def serving_requirements(bento_dir: Path) -> list[str]:
    """Pinned serving dependencies plus the modules' requirements (the Bento's requirements.txt)."""
    pins = [r.split(";")[0].strip() for r in importlib.metadata.requires("modship") or () if "extra ==" not in r]
    out = sorted(p for p in pins if re.split(r"[=<>!~\[ ]", p, maxsplit=1)[0].lower() in SERVING)
    extra = bento_dir / "env" / "python" / "requirements.txt"
    if extra.is_file():
        out += sorted(
            {
                ln.strip()
                for ln in extra.read_text().splitlines()
                if ln.strip() and not ln.lstrip().startswith(("#", "-"))
            }
        )
    return out


def constraints(python: str = sys.executable) -> list[str]:
    """This environment's versions: the runtime resolves to what the tests ran with."""
    p = subprocess.run(
        [python, "-m", "pip", "freeze", "--exclude-editable", "--disable-pip-version-check"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    if p.returncode != 0:
        raise ModshipError(f"pip freeze failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    return sorted(ln for ln in p.stdout.splitlines() if ln and not ln.lower().startswith(("modship=", "modship ")))


def runtime_tag(base_id: str, requirements: list[str], pins: list[str]) -> str:
    h = hashlib.sha256("\n".join([base_id, *requirements, "--", *pins]).encode()).hexdigest()[:12]
    return f"{RUNTIME_REPOSITORY}:{h}"


def _wheelhouse(cache: Path, tag: str, requirements: list[str], pins: list[str]) -> Path:
    """The runtime's wheels, made once on this host with its pip configuration."""
    wh = cache / "wheels" / f"runtime-{tag.rsplit(':', 1)[1]}"
    if (wh / ".done").is_file():
        return wh
    tmp = Path(tempfile.mkdtemp(prefix=".runtime-", dir=cache / "wheels"))
    try:
        (tmp / "requirements.txt").write_text("\n".join(requirements) + "\n")
        (tmp / "constraints.txt").write_text("\n".join(pins) + "\n")
        p = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", str(tmp),
             "-r", str(tmp / "requirements.txt"), "-c", str(tmp / "constraints.txt")],
            capture_output=True, text=True, check=False, timeout=1800,
        )  # fmt: skip
        if p.returncode != 0:
            raise ModshipError(f"pip wheel failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
        (tmp / ".done").touch()
        shutil.rmtree(wh, ignore_errors=True)
        tmp.rename(wh)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return wh


def require_base(docker: Docker, base: str) -> str:
    """The base image's ID; NotFound (one line saying how to get it) when absent."""
    base_id = docker.image_id(base)
    if base_id is None:
        raise NotFound(
            f"base image {base} not found: build it with tools/images/python-base.sh, or pass "
            "--base python:3.11-slim-bookworm where a registry is reachable"
        )
    return base_id


def ensure_runtime(docker: Docker, *, base: str, bento_dir: Path, cache: Path) -> str:
    """The runtime image for ``bento_dir``'s dependencies on ``base``: built unless present."""
    base_id = require_base(docker, base)
    reqs, pins = serving_requirements(bento_dir), constraints()
    tag = runtime_tag(base_id, reqs, pins)
    if docker.image_id(tag) is not None:
        return tag
    (cache / "wheels").mkdir(parents=True, exist_ok=True)
    wh = _wheelhouse(cache, tag, reqs, pins)
    with tempfile.TemporaryDirectory(prefix="modship-runtime-") as tmp:
        ctx = Path(tmp)
        shutil.copytree(wh, ctx / "wheels", copy_function=_link)
        (ctx / "Dockerfile").write_text(RUNTIME_DOCKERFILE)
        docker.build(ctx, tag, f"BASE={base}")
    return tag


def build_revision(
    docker: Docker, *, bento_dir: Path, system: str, revision: str, image: str, runtime: str, port: int
) -> Built:
    """``image``: ``runtime`` + modship's controller package + the Bento, serving on ``port``."""
    import controller

    with tempfile.TemporaryDirectory(prefix="modship-image-") as tmp:
        ctx = Path(tmp)
        skip = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(Path(controller.__file__).parent, ctx / "controller", ignore=skip, copy_function=_link)
        shutil.copytree(bento_dir, ctx / "bento", ignore=skip, symlinks=False, copy_function=_link)
        text = REVISION_DOCKERFILE.format(
            runtime=runtime, site=SITE, bento=BENTO_DIR, system=system, revision=revision, user=USER, port=port
        )
        (ctx / "Dockerfile").write_text(text)
        docker.build(ctx, image)
    return Built(image=image, runtime=runtime, size=docker.size(image))


def _link(src: str, dest: str) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def default_cache() -> Path:
    """Where wheelhouses live: ``MODSHIP_CACHE`` or ``~/.cache/modship`` (shared with tools/images)."""
    env = os.environ.get("MODSHIP_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modship"
