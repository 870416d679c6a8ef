"""Turn YAML/JSON documents into typed specs; every failure becomes a SpecError with a field path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from controller.errors import SpecError, SpecErrors

M = TypeVar("M", bound=BaseModel)


def field_path(loc: Sequence[int | str]) -> str:
    """``("steps", 2, "module")`` -> ``steps[2].module``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(document)"


def _clean(msg: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg


def from_validation_error(exc: ValidationError, *, source: str | None = None) -> SpecError:
    errors: list[SpecError] = []
    for err in exc.errors(include_url=False):
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        msg = _clean(str(err["msg"]))
        if err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "literal_error" or err["type"] == "enum":
            msg = f"{msg} (got {err.get('input')!r})"
        errors.append(SpecError(msg, field=field_path(loc), source=source))
    return errors[0] if len(errors) == 1 else SpecErrors(errors)


def load_documents(path: Path) -> list[Any]:
    """All YAML documents in a file. Missing file, bad encoding or bad YAML -> SpecError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("file not found", source=str(path)) from None
    except IsADirectoryError:
        raise SpecError("is a directory, expected a YAML file", source=str(path)) from None
    except UnicodeDecodeError:
        raise SpecError("not UTF-8 text", source=str(path)) from None
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", source=str(path)) from None
    return parse_text(text, source=str(path))


def parse_text(text: str, *, source: str | None = None) -> list[Any]:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise SpecError(f"invalid YAML{where}: {problem}", source=source) from None
    if not docs:
        raise SpecError("empty document", source=source)
    return docs


def to_model(model: type[M], data: Any, *, source: str | None = None) -> M:
    if not isinstance(data, dict):
        raise SpecError(f"expected a mapping, got {type(data).__name__}", source=source)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, source=source) from None
    except (TypeError, OverflowError, RecursionError) as exc:  # pathological input
        raise SpecError(f"invalid document: {exc}", source=source) from None


def load(model: type[M], path: Path) -> M:
    """Load exactly one document of ``model`` from ``path``."""
    docs = load_documents(path)
    if len(docs) != 1:
        raise SpecError(f"expected one document, found {len(docs)}", source=str(path))
    return to_model(model, docs[0], source=str(path))
