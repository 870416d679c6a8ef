"""Edits of people's YAML files that keep what people wrote. Pure: text in, text out.

``promote --gitops`` changes two values of a Rollout in someone's Git tree; the diff must show those
two values and nothing else. ruamel.yaml's round trip keeps comments, key order, quoting and each
collection's flow or block style. It writes one indentation for the whole file, where people mix
them (``modules:`` flush with its key, ``steps:`` indented), so :func:`edit` goes one step further: it
dumps the document before and after the change with the same settings, and keeps the file's own
bytes for every line the change did not touch. When the file's lines do not map one to one onto
ruamel's (a long flow mapping ruamel would wrap, say), ruamel's output is taken as it is: still the
same comments and key order.
"""

from __future__ import annotations

import copy
import difflib
import io
from collections.abc import Callable
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import LiteralScalarString
from ruamel.yaml.util import load_yaml_guess_indent

from controller.errors import SpecError

Change = Callable[[CommentedMap], None]
_WIDTH = 4096  # never fold long lines: a fold would be a change the user did not ask for


def edit(text: str, change: Change, *, source: str | None = None) -> str:
    """``text`` with ``change`` applied to its one document (a mapping), everything else as it was."""
    try:
        doc, seq_indent, dash = load_yaml_guess_indent(text, yaml=_yaml())
    except YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}", source=source) from None
    if not isinstance(doc, CommentedMap):
        raise SpecError("expected one YAML mapping", source=source)
    yaml = _yaml(mapping=_mapping_indent(doc), sequence=seq_indent, offset=dash)
    before = _dump(yaml, doc)
    change(doc)
    return _merge(text, before, _dump(yaml, doc))


def literal(value: str) -> Any:
    """A string written as a ``|`` block when it spans lines."""
    return LiteralScalarString(value) if "\n" in value else value


def set_after(m: CommentedMap, anchor: str, key: str, value: Any) -> None:
    """Set ``m[key]``: in place when present, else inserted right after ``anchor`` (comment lines
    that followed ``anchor`` move down with the next key, where they belong)."""
    if key in m:
        m[key] = value
        return
    keys = list(m)
    pos = keys.index(anchor) + 1 if anchor in keys else len(keys)
    m.insert(pos, key, value)
    token = _post_comment(m, anchor)
    if token is not None and "\n" in token.value.rstrip("\n"):
        eol, _, rest = token.value.partition("\n")
        moved = copy.copy(token)
        moved.value = "\n" + rest
        m.ca.items[key] = [None, None, moved, None]
        if eol.strip():
            token.value = eol + "\n"
        else:
            m.ca.items[anchor][2] = None


def set_list(m: CommentedMap, key: str, values: list[str], *, after: str) -> None:
    """Set ``m[key]`` to ``values`` keeping the list's style: a block list stays a block (``[]`` when
    empty, since YAML has no empty block list), a flow list stays flow; a new list is flow, inserted
    after ``after``."""
    old = m.get(key)
    new = CommentedSeq(values)
    if isinstance(old, CommentedSeq) and old and not old.fa.flow_style() and values:
        new.fa.set_block_style()
        last = old.ca.items.get(len(old) - 1)
        if last is not None:  # the last item's comments hold the lines that follow the list
            new.ca.items[len(values) - 1] = last
    else:
        new.fa.set_flow_style()
        if isinstance(old, CommentedSeq) and old and not old.fa.flow_style():
            last = old.ca.items.get(len(old) - 1)
            if last is not None and last[0] is not None:
                m.ca.items[key] = [None, None, last[0], None]
    set_after(m, after, key, new)


# -- layout -----------------------------------------------------------------------------------------


def _yaml(*, mapping: int | None = None, sequence: int | None = None, offset: int | None = None) -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = _WIDTH
    if mapping is not None or sequence is not None:
        dash = offset or 0
        yaml.indent(mapping=mapping or 2, sequence=max(sequence or 2, dash + 2), offset=dash)
    return yaml


def _mapping_indent(doc: CommentedMap) -> int | None:
    """How far the first nested block mapping indents its keys past its parent's."""
    for key, value in doc.items():
        if isinstance(value, CommentedMap) and value and not value.fa.flow_style():
            first = next(iter(value))
            indent: int = value.lc.key(first)[1] - doc.lc.key(key)[1]
            return indent if indent > 0 else None
    return None


def _dump(yaml: YAML, doc: CommentedMap) -> str:
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def _post_comment(m: CommentedMap, key: str) -> Any:
    entry = m.ca.items.get(key)
    return entry[2] if entry and len(entry) > 2 else None


def _squash(line: str) -> str:
    return "".join(line.split())


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _merge(text: str, before: str, after: str) -> str:
    """``after``, with the lines it shares with ``before`` taken from ``text`` (``before`` is ruamel's
    layout of ``text``); changed lines are shifted by the indentation difference at their place.
    ``after`` itself when the merge would not mean what ``after`` means."""
    mine, old, new = text.splitlines(), before.splitlines(), after.splitlines()
    own = _counterparts(old, mine)
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if op == "equal":
            out += [mine[own[i]] if i in own else old[i] for i in range(i1, i2)]
            continue
        at = i1 if op != "insert" else i1 - 1
        shift = _indent(mine[own[at]]) - _indent(old[at]) if at in own else 0
        out += [" " * shift + line if shift > 0 else line[min(-shift, _indent(line)) :] for line in new[j1:j2]]
    merged = "\n".join(out) + "\n"
    try:
        same = yaml.safe_load(merged) == yaml.safe_load(after)
    except yaml.YAMLError:
        same = False
    return merged if same else after


def _counterparts(old: list[str], mine: list[str]) -> dict[int, int]:
    """Line ``i`` of ruamel's layout -> the line of the file it stands for: lines equal but for
    whitespace, and lines ruamel reformatted where as many lines stand in both."""
    out: dict[int, int] = {}
    matcher = difflib.SequenceMatcher(a=[_squash(x) for x in old], b=[_squash(x) for x in mine], autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal" or (op == "replace" and i2 - i1 == j2 - j1):
            out.update(zip(range(i1, i2), range(j1, j2), strict=True))
    return out
