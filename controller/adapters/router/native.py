"""The router's hot modules compiled to C by mypyc, optional: the same sources, built once per
version of them, loaded only when built from exactly the files beside this one.

    python tools/native.py        # build (make native; test, demo and bench do it first)

On this machine compiling them took about a fifth of the router's CPU per request off at one
connection and a tenth at four (docs/benchmarks.md). A build is kept under
``$MODSHIP_CACHE/native/<key>`` (or ``$MODSHIP_NATIVE/<key>``: the operator image ships the host's
build there), the key a digest of the interpreter's ABI (its cache tag and extension suffix: a build
for CPython 3.11 on x86-64 glibc loads in any 3.11 there, as wheels do) and the sources of
``COMPILED``: an edited module changes the key, so a stale build is never loaded. The router runs its
Python then, as it does where nothing was built (no compiler), with ``MODSHIP_NO_EXTENSIONS=1``, or
when a build does not load (``extend`` tries it first). ``extend`` puts a matching build first on the
package's path.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

COMPILED = ("wire", "upstream", "split", "route", "fallback", "recorder", "client", "server")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]  # the directory that holds the ``controller`` package
PACKAGE = Path("controller", "adapters", "router")
DONE = ".complete"
log = logging.getLogger(__name__)
GROUP = "modship_router__mypyc"  # the module mypyc links the compiled modules into (``group_name``)


def _cache() -> Path:
    shipped = os.environ.get("MODSHIP_NATIVE")
    if shipped:
        return Path(shipped)
    return Path(os.environ.get("MODSHIP_CACHE") or Path.home() / ".cache" / "modship") / "native"


def key() -> str:
    """The build's name: a digest of the ABI it is built for and of the sources it is built from."""
    abi = f"{sys.implementation.cache_tag}\0{sysconfig.get_config_var('EXT_SUFFIX')}\0"
    h = hashlib.sha256(abi.encode())
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
    try:  # it holds all the compiled code: if it loads, so do the modules (their shims import from it)
        importlib.import_module(GROUP)
    except ImportError as exc:  # e.g. an interpreter without a symbol it needs: the Python router
        sys.path.remove(str(d))
        log.warning("the native build %s does not load (%s): the router runs its Python", d, exc)
        return path
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
