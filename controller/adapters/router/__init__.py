"""The local router: one per system, an HTTP/1.1 reverse proxy on a stable loopback port in front of
the stable and the canary revision (``bentoml serve`` processes).

    client ─▶ router ─┬─ header route / weight (sticky hash or random) ─▶ canary ─(5xx, refused,
                      │                                                         timeout)─▶ stable
                      └──────────────────────────────────────────────────▶ stable ─(mirror %)─▶ canary

Requests are buffered (``wire.MAX_BODY``) so a failed canary attempt can be replayed on stable: the
client gets stable's answer, the failure still counts against the canary (zero-loss fallback).
Responses are buffered as well and sent with a Content-Length. A configuration is swapped
atomically: requests in flight finish on the upstream they started on.

Modules, by responsibility:

- ``wire``: requests and responses on the wire (parsing results, relayed answers, JSON errors);
- ``upstream``: the keep-alive connection pool per upstream;
- ``split``: the split decision (header route, weight, sticky key, mirroring), pure;
- ``route``: the applied configuration, validated, persisted and swapped;
- ``fallback``: one attempt, and the replay on stable when the canary fails;
- ``mirror``: shadow copies to the canary and the comparison of answers;
- ``recorder`` and ``metrics``: telemetry and the Prometheus exposition (prometheus_client);
- ``admin``: the admin API; ``server``: client connections, the ``Router``, ``run``;
- ``native``: the same modules compiled by mypyc, used when built from exactly these sources.
"""

from controller.adapters.router import native

__path__ = native.extend(__path__)
