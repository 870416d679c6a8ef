"""A response cache in front of a composed service's pipeline (``spec.cache`` of a System).

A hit answers from the async HTTP handler before any thread hop or step runs. The key is the
revision, the evaluated feature flags and the canonical request inputs (JSON with sorted keys), so
a flag flip or another revision never serves an old answer. Only successful answers are stored:
never an error, never one where a fallback was taken or an optional step was shed for the latency
budget (those depend on the moment, not on the input). Hits and misses are counted in Prometheus
(``modship_response_cache_hits_total`` / ``_misses_total``, by system and revision).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from controller.pipeline.cache import LRU
from controller.spec.system import ResponseCache as Spec


class _Counters:
    def __init__(self) -> None:
        from prometheus_client import Counter

        labels = ["system", "revision"]
        self.hits = Counter("modship_response_cache_hits_total", "Response cache hits", labels)
        self.misses = Counter("modship_response_cache_misses_total", "Response cache misses", labels)


_COUNTERS: _Counters | None = None


def _counters() -> _Counters:
    global _COUNTERS
    if _COUNTERS is None:
        _COUNTERS = _Counters()
    return _COUNTERS


class ResponseCache:
    def __init__(self, spec: Spec, system: str, revision: str) -> None:
        self.revision = revision.encode()
        self.lru = LRU(spec.max_entries, spec.ttl_seconds)
        c = _counters()
        self._hits, self._misses = c.hits.labels(system, revision), c.misses.labels(system, revision)

    @classmethod
    def of(cls, spec: Spec | None, system: str, revision: str) -> ResponseCache | None:
        return cls(spec, system, revision) if spec is not None and spec.enabled else None

    def key(self, inputs: Mapping[str, Any], flags: Mapping[str, bool]) -> str | None:
        """The cache key of a request, or None when its inputs have no canonical JSON form."""
        try:
            raw = orjson.dumps(inputs, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            return None
        h = hashlib.blake2b(self.revision, digest_size=20)
        h.update(b"\0" + ",".join(f"{k}={int(v)}" for k, v in sorted(flags.items())).encode() + b"\0")
        h.update(raw)
        return h.hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored answer, as a copy marked as a hit, counted: ``meta.responseCache`` is true and
        ``meta.cached`` lists every step that ran (all of them served from the cache)."""
        body = self.lru.get(key)
        if body is None:
            self._misses.inc()
            return None
        self._hits.inc()
        meta = body["meta"]
        ran = sorted(n for n in meta["modules"] if n not in meta["skipped"])
        return {**body, "meta": {**meta, "cached": ran, "responseCache": True}}

    def put(self, key: str, body: dict[str, Any]) -> bool:
        """Store a successful answer unless it depended on the moment (a fallback, a shed step)."""
        meta = body.get("meta") or {}
        if meta.get("fallbacks") or meta.get("overBudget"):
            return False
        self.lru.put(key, body)
        return True

    def __len__(self) -> int:
        return len(self.lru)
