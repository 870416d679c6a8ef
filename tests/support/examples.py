"""The example modules (real pretrained weights), built once and cached outside the repo."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from examples import build_modules

ORDER = build_modules.ORDER


def build() -> tuple[Path, dict[str, Any]]:
    return build_modules.cached()


def variant(src: Path, dest: Path, **runtime: Any) -> Path:
    """A copy of a module directory with runtime changes (e.g. injected faults): a new version."""
    shutil.copytree(src, dest)
    m = yaml.safe_load((dest / "module.yaml").read_text())
    m["runtime"].update(runtime)
    (dest / "module.yaml").write_text(yaml.safe_dump(m))
    return dest
