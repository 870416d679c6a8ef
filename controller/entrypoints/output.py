"""Output for people (rich tables) and programs (``-o json``), and errors as one line."""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape

console = Console(highlight=False, soft_wrap=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class Format(enum.StrEnum):
    TABLE = "table"
    JSON = "json"


def emit(data: Any, fmt: Format, render: Callable[[Any], None]) -> None:
    if fmt is Format.JSON:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        render(data)


def fail(message: str, code: int) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    raise SystemExit(code)
