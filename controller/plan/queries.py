"""PromQL templates: what to measure, rendered strictly (like Flagger's ``missingkey=error``).

A template names variables as ``{{ name }}``. ``render`` fails with a SpecError naming every
missing variable: an empty string would silently turn a selector into "match anything". A value
placed inside a quoted string is escaped for that string (so ``"`` or ``\\`` cannot end the label
matcher); a value placed outside quotes must be a plain token (a duration, number or name).
Inside ``=~`` matchers a value is a regular expression, as in Prometheus.

A check's ``query`` is inline PromQL or ``template:<name>``, a template from ``TEMPLATES``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from controller.errors import SpecError
from controller.plan.observations import QueryContext

REFERENCE = "template:"
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_TOKEN = re.compile(r"^[A-Za-z0-9_:.+\-]+$")
_STANDARD = ("system", "revision", "stable_revision", "canary_revision", "window", "namespace")

_SEL = 'system="{{ system }}",revision="{{ revision }}"'
_BENTO = 'service_name="{{ system }}",service_version="{{ revision }}",endpoint!~"/readyz|/livez|/healthz|/metrics"'


def _ratio(part: str, whole: str) -> str:
    # ``or vector(0)``: a labelled counter has no series until first incremented, so "no errors
    # yet" must read 0, not "no data". The denominator has no such default: no traffic is no data.
    return f"(sum(rate({part}[{{{{ window }}}}])) or vector(0)) / sum(rate({whole}[{{{{ window }}}}]))"


def _quantile(q: float, bucket: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({bucket}{{{_SEL}}}[{{{{ window }}}}])))"


TEMPLATES: dict[str, str] = {
    # requests behind a measurement (``Sample.samples``, compared with ``minSamples``)
    "request-count": f"sum(increase(modship_requests_total{{{_SEL}}}[{{{{ window }}}}]))",
    "request-rate": f"sum(rate(modship_requests_total{{{_SEL}}}[{{{{ window }}}}]))",
    # server-side failures / requests; client errors (bad input) are the caller's fault
    "error-rate": _ratio(f'modship_requests_total{{{_SEL},outcome="error"}}', f"modship_requests_total{{{_SEL}}}"),
    "latency-p50": _quantile(0.5, "modship_request_duration_seconds_bucket"),
    "latency-p99": _quantile(0.99, "modship_request_duration_seconds_bucket"),
    # fallbacks taken per request (a request whose two steps fell back counts twice)
    "fallback-rate": _ratio(f"modship_step_fallbacks_total{{{_SEL}}}", f"modship_requests_total{{{_SEL}}}"),
    "mean-confidence": (
        f"sum(rate(modship_prediction_confidence_sum{{{_SEL}}}[{{{{ window }}}}]))"
        f" / sum(rate(modship_prediction_confidence_count{{{_SEL}}}[{{{{ window }}}}]))"
    ),
    "evaluator-pass-rate": _ratio(
        f'modship_evaluations_total{{{_SEL},result="pass"}}', f"modship_evaluations_total{{{_SEL}}}"
    ),
    # BentoML's own HTTP metrics (Bento version = modship revision); probes and scrapes excluded
    "bentoml-request-rate": f"sum(rate(bentoml_service_request_total{{{_BENTO}}}[{{{{ window }}}}]))",
    "bentoml-error-rate": _ratio(
        f'bentoml_service_request_total{{{_BENTO},http_response_code=~"5.."}}',
        f"bentoml_service_request_total{{{_BENTO}}}",
    ),
}


def resolve(query: str) -> str:
    """The template text of ``query``: inline PromQL as is, ``template:<name>`` looked up."""
    if not query.startswith(REFERENCE):
        return query
    name = query.removeprefix(REFERENCE).strip()
    if name not in TEMPLATES:
        known = ", ".join(sorted(TEMPLATES))
        raise SpecError(f"unknown query template {name!r} (known: {known})", field="query")
    return TEMPLATES[name]


def render(template: str, variables: Mapping[str, str]) -> str:
    """Fill ``{{ name }}`` placeholders. ``template`` may be a ``template:<name>`` reference.

    Raises SpecError naming the missing variables (and the template), or a value that cannot be
    placed where it stands.
    """
    text = resolve(template)
    parts = _PLACEHOLDER.split(text)  # literal, name, literal, name, ..., literal
    missing = sorted({n for n in parts[1::2] if n not in variables})
    if missing:
        names = ", ".join(missing)
        raise SpecError(
            f"PromQL template needs variable(s) {names} (given: {', '.join(sorted(variables))}): {text}", field="query"
        )
    out: list[str] = []
    quote: str | None = None
    for i, part in enumerate(parts):
        if i % 2 == 0:
            out.append(part)
            quote = _quote_after(part, quote)
        else:
            out.append(_place(part, variables[part], quote, text))
    return "".join(out)


def _quote_after(literal: str, quote: str | None) -> str | None:
    """The string quote open at the end of ``literal`` given the one open at its start."""
    escaped = False
    for ch in literal:
        if escaped:
            escaped = False
        elif quote is None:
            quote = ch if ch in "\"'`" else None
        elif ch == "\\" and quote != "`":
            escaped = True
        elif ch == quote:
            quote = None
    return quote


def _place(name: str, value: str, quote: str | None, template: str) -> str:
    if quote is None:
        if not _TOKEN.match(value):
            raise SpecError(
                f"variable {name}={value!r} is used outside quotes and must be a plain token "
                f"(a duration, number or name): {template}",
                field="query",
            )
        return value
    if quote == "`":
        if "`" in value:
            reason = f"variable {name}={value!r} holds a backtick but is used in a `raw string`"
            raise SpecError(f"{reason}: {template}", field="query")
        return value
    return value.replace("\\", "\\\\").replace(quote, "\\" + quote).replace("\n", "\\n").replace("\r", "\\r")


def duration(seconds: float) -> str:
    """A PromQL duration: 30.0 -> ``30s``, 0.25 -> ``250ms``."""
    ms = round(seconds * 1000)
    if ms <= 0:
        raise SpecError(f"a query window must be positive (got {seconds}s)", field="window")
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def variables(ctx: QueryContext, *, revision: str) -> dict[str, str]:
    """The template variables to measure ``revision`` (the canary's or the stable's) in ``ctx``."""
    out = {
        "system": ctx.system,
        "revision": revision,
        "stable_revision": ctx.stable_revision,
        "canary_revision": ctx.revision,
        "window": duration(ctx.window_s),
    }
    if ctx.namespace is not None:
        out["namespace"] = ctx.namespace
    clash = sorted(set(ctx.extra) & set(_STANDARD))
    if clash:
        raise SpecError(f"extra query variables cannot redefine {', '.join(clash)}", field="query")
    return out | ctx.extra
