"""The Rollout spec: how a new system revision replaces the stable one.

    apiVersion: modship.dev/v1alpha1
    kind: Rollout
    metadata: {name: topic-classifier}
    spec:
      system: topic-classifier
      strategy:
        canary:
          steps:
            - setWeight: 20
            - analysis: {checks: [error-rate, disagreement]}
            - setWeight: 50
            - pause: {duration: 30s}
          maxWeight: 100
      analysis:
        checks:
          - {name: error-rate, provider: builtin, metric: errorRate, threshold: {max: 0.02}}
      policies: {metricsDown: hold, fallbackToStable: true, rollbackWindow: 10m}

Durations are ``"250ms"``, ``"30s"``, ``"5m"``, ``"1h"`` or a number of seconds.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from controller.errors import SpecError
from controller.spec import parse
from controller.spec.base import Spec
from controller.spec.modules import API_VERSION
from controller.spec.objects import ObjectMeta

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def seconds(value: Any) -> float:
    """``"30s"`` -> 30.0; numbers are seconds. Raises ValueError on anything else."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '30s'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value.strip())
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"{value!r} is not a duration: use e.g. '500ms', '30s', '5m', '1h' or seconds")


# On the wire a duration is a number of seconds or a string like "30s": the CRD's int-or-string.
Duration = Annotated[float, BeforeValidator(seconds), WithJsonSchema({"x-kubernetes-int-or-string": True})]
# Constraints only the CRD states (the API server checks them; the models check the same things their
# own way): see controller/spec/crd.py.
_ONE_KEY = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})


class Provider(enum.StrEnum):
    BUILTIN = "builtin"
    PROMETHEUS = "prometheus"


class BuiltinMetric(enum.StrEnum):
    """Metrics the built-in provider computes from the router's per-revision telemetry."""

    ERROR_RATE = "errorRate"  # failed requests / requests (5xx, connection errors, timeouts)
    LATENCY_P50 = "latencyP50"  # seconds
    LATENCY_P99 = "latencyP99"
    FALLBACK_RATE = "fallbackRate"  # responses where a step fell back / responses
    PREDICTION_JSD = "predictionJSD"  # Jensen-Shannon distance of predicted classes vs stable
    PREDICTION_PSI = "predictionPSI"
    DISAGREEMENT = "disagreement"  # mirrored requests whose label differs from stable's
    MEAN_CONFIDENCE = "meanConfidence"
    EVALUATOR_PASS_RATE = "evaluatorPassRate"
    INPUT_DRIFT = "inputDrift"  # PSI of input lengths vs the module's reference statistics
    REQUEST_RATE = "requestRate"  # requests per second


class Threshold(Spec):
    """The range a measurement must stay in. With ``relativeTo: stable``, bounds apply to
    canary - stable (e.g. ``max: 0.01`` = at most 1 point worse than stable)."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    min: float | None = None
    max: float | None = None
    relative_to: Literal["stable"] | None = None

    @model_validator(mode="after")
    def _some(self) -> Threshold:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class Check(Spec):
    name: str = Field(json_schema_extra={"minLength": 1})
    provider: Provider = Provider.BUILTIN
    metric: BuiltinMetric | None = None
    query: str | None = Field(default=None, description="PromQL template for provider prometheus")
    window: Duration = 30.0
    threshold: Threshold
    interval: Duration = 5.0
    count: int | None = Field(default=None, ge=1, description="measurements to take (None: until step ends)")
    failure_limit: int = Field(default=0, ge=0)
    inconclusive_limit: int = Field(default=2, ge=0)
    consecutive_error_limit: int = Field(default=4, ge=0)
    min_samples: int = Field(default=20, ge=0)

    @model_validator(mode="after")
    def _provider(self) -> Check:
        if self.provider is Provider.BUILTIN and self.metric is None:
            raise ValueError("provider builtin needs 'metric'")
        if self.provider is Provider.PROMETHEUS and not self.query:
            raise ValueError("provider prometheus needs 'query'")
        if self.interval <= 0:
            raise ValueError("interval must be positive")
        return self


class AnalysisStep(Spec):
    checks: tuple[str, ...] = Field(min_length=1)


class Pause(Spec):
    duration: Duration | None = Field(default=None, description="omit to pause until resumed")


class SetFlag(Spec):
    name: str
    enabled: bool = True
    percent: float = Field(default=100.0, ge=0, le=100)


class SetHeaderRoute(Spec):
    name: str = Field(min_length=1)
    value: str | None = Field(default=None, description="exact value; omit to match any value")

    @field_validator("name")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()


class SetMirror(Spec):
    percent: float = Field(ge=0, le=100)


class CanaryStep(Spec):
    """Exactly one of: setWeight, pause, analysis, setFlag, setHeaderRoute, setMirror."""

    model_config = _ONE_KEY

    set_weight: float | None = Field(default=None, ge=0, le=100)
    pause: Pause | None = None
    analysis: AnalysisStep | None = None
    set_flag: SetFlag | None = None
    set_header_route: SetHeaderRoute | None = None
    set_mirror: SetMirror | None = None

    @model_validator(mode="after")
    def _one(self) -> CanaryStep:
        given = [k for k, v in self if v is not None]
        if len(given) != 1:
            raise ValueError(
                "a step is exactly one of setWeight, pause, analysis, setFlag, setHeaderRoute, setMirror"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @property
    def kind(self) -> str:
        """The step's kind as written: setWeight, pause, analysis, setFlag, setHeaderRoute, setMirror."""
        from pydantic.alias_generators import to_camel

        return to_camel(next(k for k, v in self if v is not None))

    @property
    def value(self) -> Any:
        return getattr(self, next(k for k, v in self if v is not None))


class BackgroundAnalysis(Spec):
    checks: tuple[str, ...] = Field(min_length=1)
    starting_step: int = Field(default=0, ge=0)


class Canary(Spec):
    steps: list[CanaryStep] = Field(min_length=1)
    max_weight: float = Field(default=100.0, gt=0, le=100)
    analysis: BackgroundAnalysis | None = None


class Strategy(Spec):
    canary: Canary


class MetricsDown(enum.StrEnum):
    HOLD = "hold"
    ROLLBACK = "rollback"


class Policies(Spec):
    metrics_down: MetricsDown = MetricsDown.HOLD
    fallback_to_stable: bool = True
    rollback_window: Duration = 600.0
    progress_deadline: Duration = 900.0
    sticky_header: str | None = Field(default=None, description="route a user consistently by this header")
    sticky_cookie: str | None = None


class Workload(Spec):
    """Kubernetes: how a revision runs. The image is ``{image}:{revision}`` unless ``image`` holds
    ``{revision}`` (e.g. ``registry.example.com/topic:{revision}``)."""

    image: str = Field(min_length=1, description="repository, or a template holding {revision}")
    replicas: int = Field(default=2, ge=1, le=1000)
    port: int = Field(default=3000, ge=1, le=65535)
    resources: dict[str, dict[str, str]] = Field(default_factory=dict)
    service_account: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    role_services: bool = Field(
        default=False,
        description="also create Services S-stable and S-canary where the traffic router does not need them"
        " (replica ratios, the modship router); Gateway API, Istio and NGINX always get them",
    )

    def image_for(self, revision: str) -> str:
        return self.image.replace("{revision}", revision) if "{revision}" in self.image else f"{self.image}:{revision}"


class GatewayAPI(Spec):
    http_route: str = Field(min_length=1, description="the HTTPRoute whose backendRefs modship weights")


class Istio(Spec):
    virtual_service: str = Field(min_length=1)


class Nginx(Spec):
    ingress: str = Field(min_length=1, description="the stable Ingress; modship manages its canary twin")


class ModshipRouting(Spec):
    """modship's own router as a Deployment in front of the revision Services: sticky assignment,
    header routes, mirroring with answer comparison and zero-loss fallback as on one machine, and
    its telemetry serves the ``builtin`` checks. The system's Service ``S`` selects its pods."""

    replicas: int = Field(default=1, ge=1, le=50)
    port: int = Field(default=8080, ge=1, le=65535, description="the router's container port")
    image: str | None = Field(
        default=None, description="default: the operator's own image (MODSHIP_ROUTER_IMAGE, set by the chart)"
    )
    resources: dict[str, dict[str, str]] = Field(default_factory=dict)
    node_selector: dict[str, str] = Field(default_factory=dict)


class TrafficRouting(Spec):
    """Kubernetes: which router splits traffic (one of them; none: replica ratios)."""

    model_config = ConfigDict(json_schema_extra={"maxProperties": 1})

    gateway_api: GatewayAPI | None = Field(default=None, alias="gatewayAPI")
    istio: Istio | None = None
    nginx: Nginx | None = None
    modship: ModshipRouting | None = None

    @model_validator(mode="after")
    def _one(self) -> TrafficRouting:
        if sum(x is not None for x in (self.gateway_api, self.istio, self.nginx, self.modship)) > 1:
            raise ValueError("choose one of gatewayAPI, istio, nginx, modship")
        return self

    @property
    def routes_to_role_services(self) -> bool:
        """Whether the router sends traffic to ``S-stable``/``S-canary`` (the meshes), rather than to
        every revision's pods (replica ratios) or to per-revision Services (the modship router)."""
        return any(x is not None for x in (self.gateway_api, self.istio, self.nginx))


class GateType(enum.StrEnum):
    """Flagger's webhook gates. A confirm-* gate holds the rollout until its URL answers 2xx (any
    other answer, or none: asked again after ``interval``); pre-rollout must answer 2xx before the
    canary gets traffic (more than ``failureLimit`` failures abort it); a rollback gate answering
    2xx aborts the canary; post-rollout is told the outcome (its answer changes nothing)."""

    CONFIRM_ROLLOUT = "confirm-rollout"
    PRE_ROLLOUT = "pre-rollout"
    CONFIRM_TRAFFIC_INCREASE = "confirm-traffic-increase"
    CONFIRM_PROMOTION = "confirm-promotion"
    POST_ROLLOUT = "post-rollout"
    ROLLBACK = "rollback"


class Gate(Spec):
    name: str = Field(min_length=1)
    type: GateType
    url: str = Field(pattern=r"^https?://", description="POSTed a JSON description of the rollout")
    timeout: Duration = 10.0
    interval: Duration = Field(default=5.0, description="how soon a holding gate is asked again")
    failure_limit: int = Field(default=2, ge=0, description="pre-rollout: failures tolerated before the abort")
    metadata: dict[str, str] = Field(default_factory=dict, description="passed to the gate as is")


class LoadTest(Spec):
    """The built-in load-test hook: while a canary is in flight, replay a dataset of request bodies
    through the system's router (on Kubernetes its Service) at ``rate`` requests per second, so
    analysis has samples on systems with little live traffic."""

    dataset: str = Field(min_length=1, description="a JSON-lines file: one request body per line")
    rate: float = Field(default=5.0, gt=0, le=1000, description="requests per second")
    path: str = Field(default="/predict", pattern=r"^/")
    headers: dict[str, str] = Field(default_factory=dict)


class AnalysisChecks(Spec):
    checks: list[Check] = Field(default_factory=list)


class RolloutBody(Spec):
    system: str = Field(
        description="the System this rollout delivers",
        json_schema_extra={"pattern": "^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$"},
    )
    revision: str | None = Field(
        default=None,
        description="the revision to roll out (set by `modship promote`)",
        json_schema_extra={"pattern": "^r[0-9a-f]{12}$"},
    )
    modules: tuple[str, ...] = Field(default=(), description="module versions this revision changes (grouped rollouts)")
    paused: bool = False
    strategy: Strategy
    analysis: AnalysisChecks = AnalysisChecks()
    policies: Policies = Policies()
    prometheus: str | None = Field(default=None, description="Prometheus URL for checks with provider prometheus")
    workload: Workload | None = None  # Kubernetes only
    traffic_routing: TrafficRouting | None = None  # Kubernetes only
    gates: tuple[Gate, ...] = Field(default=(), description="webhook gates with Flagger's semantics")
    load_test: LoadTest | None = None


class Rollout(Spec):
    api_version: Literal["modship.dev/v1alpha1"] = API_VERSION
    kind: Literal["Rollout"] = "Rollout"
    metadata: ObjectMeta
    spec: RolloutBody

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def steps(self) -> list[CanaryStep]:
        return self.spec.strategy.canary.steps

    def check(self, name: str) -> Check:
        return next(c for c in self.spec.analysis.checks if c.name == name)


def problems(r: Rollout) -> list[tuple[str, str]]:
    """(field, reason) for references that do not resolve and weights above maxWeight."""
    out: list[tuple[str, str]] = []
    names = [c.name for c in r.spec.analysis.checks]
    if len(set(names)) != len(names):
        out.append(("spec.analysis.checks", "duplicate check names"))
    known = set(names)
    canary = r.spec.strategy.canary
    for i, s in enumerate(canary.steps):
        if s.analysis is not None:
            out += [
                (f"spec.strategy.canary.steps[{i}].analysis.checks", f"unknown check {c!r}")
                for c in s.analysis.checks
                if c not in known
            ]
        if s.set_weight is not None and s.set_weight > canary.max_weight:
            out.append(
                (
                    f"spec.strategy.canary.steps[{i}].setWeight",
                    f"{s.set_weight:g} is above maxWeight {canary.max_weight:g}",
                )
            )
    if canary.analysis is not None:
        out += [
            ("spec.strategy.canary.analysis.checks", f"unknown check {c!r}")
            for c in canary.analysis.checks
            if c not in known
        ]
        if canary.analysis.starting_step >= len(canary.steps):
            out.append(("spec.strategy.canary.analysis.startingStep", "beyond the last step"))
    gate_names = [g.name for g in r.spec.gates]
    if len(set(gate_names)) != len(gate_names):
        out.append(("spec.gates", "duplicate gate names"))
    if any(c.provider is Provider.PROMETHEUS for c in r.spec.analysis.checks) and not r.spec.prometheus:
        out.append(("spec.prometheus", "checks with provider prometheus need the Prometheus URL"))
    return out


def from_document(data: Any, *, source: str | None = None) -> Rollout:
    rollout = parse.to_model(Rollout, data, source=source)
    errs = [SpecError(m, field=f, source=source) for f, m in problems(rollout)]
    if errs:
        from controller.errors import SpecErrors

        raise errs[0] if len(errs) == 1 else SpecErrors(errs)
    return rollout
