"""HTTP/1.1 wire format of the router: requests as parsed from clients, responses as parsed from
upstreams, and the bytes written back (relayed answers, JSON errors). Header names are lower-cased
and hop-by-hop headers are dropped on the way in; framing is rewritten (Content-Length) on the way
out, since both sides are buffered.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Final

import orjson

from controller.plan import answers

MAX_BODY: Final = 4 << 20  # request bodies are small JSON; buffered for replay
MAX_RESPONSE: Final = 32 << 20
MAX_HEADER_BYTES: Final = 64 << 10

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"expect",
    }
)
NO_BODY_METHODS: Final = frozenset({b"GET", b"HEAD", b"DELETE", b"OPTIONS"})
REASONS: Final = {s.value: s.phrase.encode() for s in HTTPStatus}
_STATUS_LINES: Final = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in REASONS.items()}
_CLOSE: Final = b"connection: close\r\n"
LENGTH_AND_REVISION: Final = frozenset({b"content-length", b"x-modship-revision"})

# One scan of a head (the lower-cased one) for the headers that decide how a message is relayed: the
# hop-by-hop ones, Content-Length with its value when it is readable, Connection with "keep-alive"
# when that is all it says, modship's revision. ``notable`` reads heads httptools has parsed with it.
_DECIDING: Final = re.compile(
    rb"\n(" + b"|".join(sorted(HOP_BY_HOP | {b"x-modship-revision"})) + rb"):"
    rb"(?:[ \t]*([0-9]{1,9})[ \t]*\r|[ \t]*(keep-alive)[ \t]*\r)?"
)

# The common case, read without a parser callback and without the regex engine: one whole message in
# one read, its head well-formed by RFC 9112's grammar (a stricter one than httptools': token names,
# no obs-fold, CRLF line ends, HTTP/1.1, a request's target in origin form), framed by exactly one
# Content-Length and free of hop-by-hop headers but "Connection: keep-alive". Such a message is passed
# on as it came; any other goes through httptools. The scan is a loop over the bytes: compiled, it
# touches little memory, and behind a busy upstream the router's CPU per request is mostly cache
# misses (there a regex match and findall cost about three times this loop).
_TOKEN: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# a byte's class: 1 a token character, 2 another field-value one (HTAB, SP, VCHAR, obs-text), 0 neither
_CLASS: Final = bytes(1 if c in _TOKEN else 2 if c == 9 or 32 <= c <= 126 or c >= 128 else 0 for c in range(256))
# the lengths of the names the scan decides on (the others are passed over unread)
_DECIDING_LENGTHS: Final = bytes(
    1 if n in {len(h) for h in HOP_BY_HOP | {b"x-modship-revision"}} else 0 for n in range(19)
)
_NO_BODY: Final = frozenset({204, 304})  # statuses whose answers have no body, whatever their length says
_REVISION: Final = 1  # flags of ``_fields``: x-modship-revision is there
_KEEP_ALIVE: Final = 2  # "Connection: keep-alive" is there
LENGTH_ONLY: Final = frozenset({b"content-length"})


class Reject(Exception):
    """A request refused while parsing it (``status`` 400, 413, 431)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Response:
    """An upstream's answer, buffered: its head as it came (status line and header lines, up to and
    including the blank line) and its body (de-chunked)."""

    __slots__ = ("body", "head", "keep_alive", "notable", "status")

    def __init__(
        self, status: int, head: bytes, body: bytes, keep_alive: bool, known: frozenset[bytes] | None = None
    ) -> None:
        self.status = status
        self.head = head
        self.body = body
        self.keep_alive = keep_alive
        self.notable = notable(head) if known is None else known  # see ``notable``

    @property
    def reason(self) -> bytes:
        line = self.head[: self.head.find(b"\r\n")]
        return line.split(b" ", 2)[2] if line.count(b" ") >= 2 else b""

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The header lines, names lower-cased (parsed from ``head`` when asked)."""
        return fields(self.head)


def notable(head: bytes) -> frozenset[bytes]:
    """Which of the header names ``relay`` cares about a response head carries (lower-cased)."""
    return frozenset(name for name, _, _ in _DECIDING.findall(head.lower()))


class Request:
    """A client's request, buffered (so a failed canary attempt can be replayed on stable)."""

    __slots__ = (
        "_data",
        "_head",
        "_headers",
        "_lengths",
        "body",
        "canary",
        "keep_alive",
        "method",
        "raw",
        "reject",
        "target",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]] | None,
        body: bytes,
        *,
        keep_alive: bool,
        reject: Reject | None = None,
        data: bytes | None = None,
        head: int = 0,
    ) -> None:
        self.method = method
        self.target = target
        self._headers = headers  # None: parsed from ``data`` when asked
        self.body = body
        self.keep_alive = keep_alive
        self.reject = reject
        self._lengths: tuple[int, ...] | None = None
        self._data = data  # what is sent upstream: as the client sent it (``head``: its head's length), or built
        self._head = head
        self.raw = data if head else None  # the request as the client sent it, passed on as it is
        self.canary: bool | None = None  # the split's decision, once taken

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """Names lower-cased, hop-by-hop headers removed."""
        if self._headers is None:
            assert self._data is not None
            # as httptools gives them: leading whitespace dropped from values, trailing kept
            lines = self._data[: self._head - 4].split(b"\r\n")[1:]
            pairs = ((n.lower(), v.lstrip(b" \t")) for n, _, v in (line.partition(b":") for line in lines))
            self._headers = [(n, v) for n, v in pairs if n not in HOP_BY_HOP]
        return self._headers

    def lengths(self) -> tuple[int, ...]:
        """Character lengths of the texts in the body (for input-drift telemetry), parsed once."""
        if self._lengths is None:
            self._lengths = answers.input_lengths(self.body) if self.body else ()
        return self._lengths

    def encode(self, extra: bytes = b"") -> bytes:
        """The request as sent upstream (``extra``: more header lines); without ``extra``, built once."""
        data = self._data
        if data is not None and self._head:  # as the client sent it: ``extra`` goes before the blank line
            return data[: self._head - 2] + extra + data[self._head - 2 :] if extra else data
        if not extra and data is not None:
            return data
        parts = [self.method, b" ", self.target, b" HTTP/1.1\r\n"]
        for n, v in self.headers:
            parts += (n, b": ", v, b"\r\n")
        if self.body or self.method not in NO_BODY_METHODS:
            parts.append(b"content-length: %d\r\n" % len(self.body))
        parts += (extra, b"\r\n", self.body)
        data = b"".join(parts)
        if not extra:
            self._data = data
        return data


def fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """A head's header lines (after its first line), names lower-cased, values stripped."""
    pairs = (line.partition(b":") for line in head.split(b"\r\n")[1:] if line)
    return [(n.strip().lower(), v.strip()) for n, _, v in pairs]


def _fields(data: bytes, i: int) -> tuple[int, int, int]:
    """The header lines of ``data`` from ``i`` up to and including the blank line, strictly by the
    grammar: (where the head ends, its Content-Length or -1, ``_REVISION | _KEEP_ALIVE`` flags), or
    an end of -1 when the head is not whole, not well-formed, framed otherwise (a Content-Length
    unreadable or repeated) or carries another hop-by-hop header."""
    n = len(data)
    table = _CLASS
    length = -1
    flags = 0
    while i + 1 < n:
        if data[i] == 13:  # the blank line
            return (i + 2, length, flags) if data[i + 1] == 10 else (-1, 0, 0)
        start = i
        while i < n and table[data[i]] == 1:
            i += 1
        if i == start or i >= n or data[i] != 58:  # a token, then ":"
            return -1, 0, 0
        colon = i
        i += 1
        while i < n and table[data[i]]:
            i += 1
        if i + 1 >= n or data[i] != 13 or data[i + 1] != 10:
            return -1, 0, 0
        size = colon - start
        if size < 19 and _DECIDING_LENGTHS[size]:
            if _named(data, start, b"content-length", size):
                if length >= 0:
                    return -1, 0, 0
                length = _digits(data, colon + 1, i)
                if length < 0:
                    return -1, 0, 0
            elif _named(data, start, b"x-modship-revision", size):
                flags |= _REVISION
            elif _named(data, start, b"connection", size) and _is_keep_alive(data[colon + 1 : i]):
                flags |= _KEEP_ALIVE
            elif data[start:colon].lower() in HOP_BY_HOP:
                return -1, 0, 0
        i += 2
    return -1, 0, 0


def _named(data: bytes, i: int, name: bytes, size: int) -> bool:
    """Whether the token of ``size`` bytes at ``data[i]`` is ``name`` (lower-case letters and "-"),
    in any case: a byte OR 32 is its lower case for a letter, and no other token byte gives a letter
    or "-" by it."""
    return size == len(name) and all(data[i + k] | 32 == name[k] for k in range(size))


def _is_keep_alive(value: bytes) -> bool:
    return value.strip(b" \t").lower() == b"keep-alive"


def _digits(data: bytes, i: int, end: int) -> int:
    """A Content-Length's value in ``data[i:end]``: 1 to 9 digits between optional blanks, or -1."""
    while i < end and (data[i] == 32 or data[i] == 9):
        i += 1
    while end > i and (data[end - 1] == 32 or data[end - 1] == 9):
        end -= 1
    if not 0 < end - i <= 9:
        return -1
    value = 0
    while i < end:
        c = data[i]
        if c < 48 or c > 57:
            return -1
        value = value * 10 + c - 48
        i += 1
    return value


def lean_request(data: bytes) -> Request | None:
    """``data`` as one whole request in the common form (see ``_fields``), or None."""
    n = len(data)
    table = _CLASS
    i = 0
    while i < n and table[data[i]] == 1:  # the method: a token
        i += 1
    if i == 0 or i + 1 >= n or data[i] != 32 or data[i + 1] != 47:
        return None
    method = i
    i += 1
    while i < n and 32 < data[i] < 127:  # the target, in origin form: "/", then visible ASCII
        i += 1
    if i == method + 1 or not data.startswith(b" HTTP/1.1\r\n", i):
        return None
    target = i
    end, length, _ = _fields(data, i + 11)
    if end < 0 or end > MAX_HEADER_BYTES or n - end != max(length, 0):  # no length: no body
        return None
    return Request(data[:method], data[method + 1 : target], None, data[end:], keep_alive=True, data=data, head=end)


def lean_response(data: bytes, *, keep_alive: bool) -> Response | None:
    """``data`` as one whole response in the common form (see ``_fields``), or None."""
    status, end, length, known = lean_head(data)
    if end < 0 or length != len(data) - end:
        return None
    return Response(status, data[:end], data[end:], keep_alive, known)


def lean_head(data: bytes) -> tuple[int, int, int, frozenset[bytes]]:
    """The head of a response in the common form (see ``_fields``) at the start of ``data``: its
    status, where it ends, its Content-Length and ``Response.notable``; an end of -1 when there is
    no such head (not whole, or not in that form). What follows it may be its body, whole or not."""
    n = len(data)
    if n < 17 or not data.startswith(b"HTTP/1.1 ") or data[12] != 32:
        return 0, -1, 0, LENGTH_ONLY
    status = 0
    for i in range(9, 12):
        c = data[i]
        if c < 48 or c > 57:
            return 0, -1, 0, LENGTH_ONLY
        status = status * 10 + c - 48
    if not 200 <= status <= 599:
        return 0, -1, 0, LENGTH_ONLY
    i = 13
    table = _CLASS
    while i < n and table[data[i]]:  # the reason phrase
        i += 1
    if i + 1 >= n or data[i] != 13 or data[i + 1] != 10:
        return 0, -1, 0, LENGTH_ONLY
    end, length, flags = _fields(data, i + 2)
    if end < 0 or length < 0 or flags & _KEEP_ALIVE or (length and status in _NO_BODY):
        return 0, -1, 0, LENGTH_ONLY  # (a 304's length is the one a 200 would have had; no body follows)
    return status, end, length, LENGTH_AND_REVISION if flags & _REVISION else LENGTH_ONLY


def status_line(status: int, reason: bytes = b"") -> bytes:
    line = _STATUS_LINES.get(status)
    if line is not None and (not reason or reason == REASONS[status]):
        return line
    return b"HTTP/1.1 %d %s\r\n" % (status, reason or REASONS.get(status, b"Unknown"))


def response(
    status: int, body: bytes, *, keep_alive: bool, ctype: bytes = b"application/json", extra: bytes = b""
) -> bytes:
    return b"".join(
        (
            status_line(status),
            b"content-type: %s\r\ncontent-length: %d\r\n" % (ctype, len(body)),
            extra,
            b"" if keep_alive else _CLOSE,
            b"\r\n",
            body,
        )
    )


def json(status: int, doc: object, *, keep_alive: bool, extra: bytes = b"") -> bytes:
    return response(status, orjson.dumps(doc), keep_alive=keep_alive, extra=extra)


def relay(resp: Response, *, tail: bytes, keep_alive: bool, head: bool) -> bytes:
    """The upstream's response for the client. ``tail``: modship's header lines
    (``x-modship-revision``, unless the upstream named one, then ``x-modship-routed``).

    A head that is HTTP/1.1, framed by Content-Length and free of hop-by-hop headers (what an
    upstream on keep-alive sends) is relayed as it came, the tail spliced in before its blank line;
    any other is rebuilt header by header."""
    named = b"x-modship-revision" in resp.notable
    if b"content-length" in resp.notable and resp.notable <= LENGTH_AND_REVISION and resp.head.startswith(b"HTTP/1.1 "):
        return b"".join(
            (
                resp.head[:-2],
                tail[tail.index(b"\n") + 1 :] if named else tail,
                b"" if keep_alive else _CLOSE,
                b"\r\n",
                b"" if head else resp.body,
            )
        )
    parts = [status_line(resp.status, resp.reason)]
    for n, v in resp.headers:
        if n in HOP_BY_HOP and not (head and n == b"content-length"):
            continue
        parts += (n, b": ", v, b"\r\n")
    parts.append(tail[tail.index(b"\n") + 1 :] if named else tail)
    if not head:
        parts.append(b"content-length: %d\r\n" % len(resp.body))
    if not keep_alive:
        parts.append(_CLOSE)
    parts += (b"\r\n", b"" if head else resp.body)
    return b"".join(parts)


def tail(revision: bytes, routed: bytes) -> bytes:
    """The header lines ``relay`` adds; the first line is the revision (dropped when already named)."""
    return b"x-modship-revision: %s\r\nx-modship-routed: %s\r\n" % (revision, routed)
