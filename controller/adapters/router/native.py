"""The router's hot modules compiled to C by mypyc, optional: the same sources, built once per
version of them, loaded only when built from exactly the files beside this one.

    python tools/native.py        # build (make native; test, demo and bench do it first)

On this machine compiling them took about a fifth of the router's CPU per request off at one
connection and a tenth at four (docs/benchmarks.md). A build is kept under
``$MODSHIP_CACHE/native/<key>``, the key a digest of the Python version, mypy's and the sources of
``COMPILED``: an edited module changes the key, so a stale build is never loaded; the router runs
its Python then, as it does where nothing was built (no compiler, the images) or with
``MODSHIP_NO_EXTENSIONS=1``. ``extend`` puts a matching build first on the package's path.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
import sys
import tempfile
from pathlib import Path

COMPILED = ("wire", "upstream", "split", "route", "fallback", "recorder", "client", "server")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]  # the directory that holds the ``controller`` package
PACKAGE = Path("controller", "adapters", "router")
DONE = ".complete"


def _cache() -> Path:
    return Path(os.environ.get("MODSHIP_CACHE") or Path.home() / ".cache" / "modship") / "native"


def key() -> str:
    """The build's name: a digest of what decides the compiled code."""
    try:
        mypy = importlib.metadata.version("mypy")
    except importlib.metadata.PackageNotFoundError:
        mypy = "-"
    h = hashlib.sha256(f"{sys.version}\0{sys.implementation.cache_tag}\0{mypy}\0".encode())
    for name in COMPILED:
        h.update((HERE / f"{name}.py").read_bytes())
    return h.hexdigest()[:20]


def built() -> Path | None:
    """The build for these sources, if there is one."""
    try:
        d = _cache() / key()
    except OSError:  # a source unreadable: nothing to match
        return None
    return d if (d / DONE).is_file() else None


def extend(path: list[str]) -> list[str]:
    """The package's ``__path__``, with the matching build first (and its runtime importable)."""
    if os.environ.get("MODSHIP_NO_EXTENSIONS"):
        return path
    d = built()
    if d is None:
        return path
    if str(d) not in sys.path:
        sys.path.append(str(d))  # the group module mypyc links the compiled modules into
    return [str(d / PACKAGE), *path]


def build() -> Path:
    """Compile ``COMPILED`` into the cache, unless built already; the build's directory."""
    done = built()
    if done is not None:
        return done
    target = _cache() / key()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        out, work = Path(tmp, "out"), Path(tmp, "work")
        files = [str(PACKAGE / f"{name}.py") for name in COMPILED]
        script = (
            "import sys\n"
            "from setuptools import setup\n"
            "from mypyc.build import mypycify\n"
            f"setup(name='modship-router-native', ext_modules=mypycify({files!r}, group_name='modship_router',"
            f" opt_level='3', target_dir={str(work / 'c')!r}),"
            f" script_args=['build_ext', '--build-lib', {str(out)!r}, '--build-temp', {str(work)!r}])\n"
        )
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, capture_output=True, timeout=900)
        (out / DONE).write_text(key() + "\n")
        if not target.exists():  # else built meanwhile by another process
            os.replace(out, target)
    return target
