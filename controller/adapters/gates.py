"""The Gates port over HTTP: POST the rollout's description to a gate and read its status code."""

from __future__ import annotations

import httpx

from controller.spec.rollout import Gate


class HttpGates:
    """Webhook gates. A gate's answer is its status code: 2xx lets the rollout through."""

    def __init__(self, *, transport: httpx.BaseTransport | None = None) -> None:
        self._client = httpx.Client(transport=transport, follow_redirects=False)

    def ask(self, gate: Gate, payload: dict[str, object]) -> tuple[bool, str]:
        try:
            resp = self._client.post(gate.url, json=payload, timeout=gate.timeout)
        except httpx.TimeoutException:
            return False, f"no answer within {gate.timeout:g}s"
        except httpx.HTTPError as exc:  # its text may hold the URL: name the kind only
            return False, f"cannot connect ({type(exc).__name__})"
        return 200 <= resp.status_code < 300, f"HTTP {resp.status_code}"

    def close(self) -> None:
        self._client.close()
