"""The example modules (real pretrained weights), built once and cached outside the repo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from examples import build_modules

ORDER = [
    "text-encoder-v1",
    "text-encoder-v2",
    "topic-head-v1",
    "topic-head-v2",
    "l3-to-l6-v1",
    "confidence-v1",
    "text-guard-v1",
]


def build() -> tuple[Path, dict[str, Any]]:
    return build_modules.cached()
