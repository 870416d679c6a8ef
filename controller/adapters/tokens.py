"""Credentials of the local control API: ``$MODSHIP_HOME/tokens.json`` (mode 0600).

The file maps a user name to the SHA-256 of that user's token and when it was made; the token
itself is shown once (``modship up`` writes the owner's into ``controller.json``, also 0600;
``modship token create USER`` prints another user's). Whoever can read the home directory is the
owner: creating and revoking tokens is done on the files, never over the API.

``user_of`` is what the API asks on every request: it re-reads the file only when it changed (a
token created or revoked while the controller runs counts at once) and compares the presented
token's hash with every stored one in constant time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from controller import atomic
from controller.errors import NotFound, SpecError

FILE = "tokens.json"
PREFIX = "mst_"  # recognisable in a leaked log or a secret scanner
_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_user(user: str) -> str:
    if not _USER.match(user):
        raise SpecError(f"{user!r} is not a user name (letters, digits, . _ @ -; at most 64 characters)", field="USER")
    return user


class TokenStore:
    def __init__(self, home: Path) -> None:
        self.path = home / FILE
        self._cache: tuple[tuple[int, int, int], dict[str, str]] | None = None  # (stat key, user -> hash)
        self._mutex = threading.Lock()

    # -- the owner's side (files) ------------------------------------------------------------------
    def create(self, user: str, *, now: float | None = None) -> str:
        """A new token for ``user`` (replacing the user's previous one); returned once, only its
        hash is kept."""
        check_user(user)
        token = PREFIX + secrets.token_urlsafe(32)
        with self._locked() as entries:
            entries[user] = {"sha256": digest(token), "created": time.time() if now is None else now}
        return token

    def revoke(self, user: str) -> None:
        with self._locked() as entries:
            if entries.pop(user, None) is None:
                raise NotFound(f"no token for user {user!r} (see `modship token list`)")

    def users(self) -> dict[str, float]:
        """Every user with a token and when it was created."""
        return {u: float(e.get("created", 0.0)) for u, e in sorted(self._read().items())}

    # -- the API's side ----------------------------------------------------------------------------
    def user_of(self, token: str) -> str | None:
        """The user a presented token belongs to, None when it is nobody's."""
        presented = digest(token)
        found = None
        for user, stored in self._hashes().items():  # every entry: no early exit on a match
            if hmac.compare_digest(presented, stored):
                found = user
        return found

    def _hashes(self) -> dict[str, str]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._mutex:
            if self._cache is None or self._cache[0] != key:
                self._cache = (key, {u: str(e.get("sha256", "")) for u, e in self._read().items()})
            return self._cache[1]

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            raise SpecError(f"{self.path} is not valid JSON", source=str(self.path)) from None
        return {str(u): dict(e) for u, e in data.items() if isinstance(e, dict)} if isinstance(data, dict) else {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, Any]]]:
        """Read, change and write the file under an exclusive lock (``up`` and ``token create``
        may run at once)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(FILE + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            entries = self._read()
            yield entries
            atomic.write_text(self.path, json.dumps(entries, indent=1, sort_keys=True), mode=0o600)
        finally:
            os.close(fd)
