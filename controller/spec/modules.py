"""The Module manifest: role, runtime, interface contract and metadata of one module version.

A module directory holds a ``module.yaml`` of ``kind: Module`` and the files it names. The contract
says what the module accepts and produces, in types *and* meaning (embedding space, tokenizer, label
set, value range); compatibility is decided from contracts alone (``registry.compat``).
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from controller.errors import SpecError
from controller.spec import refs
from controller.spec.base import Spec

API_VERSION: Literal["modship.dev/v1alpha1"] = "modship.dev/v1alpha1"


class Role(enum.StrEnum):
    ENCODER = "encoder"
    ADAPTER = "adapter"
    HEAD = "head"
    EVALUATOR = "evaluator"
    GUARD = "guard"
    TRANSFORM = "transform"  # pre- or post-processing: resizing, scaling, feature extraction


class Stability(enum.StrEnum):
    STABLE = "stable"
    EXPERIMENTAL = "experimental"


ScalarDType = Literal["string", "float32", "float64", "int32", "int64", "uint8", "bool"]
DType = Literal["string", "float32", "float64", "int32", "int64", "uint8", "bool", "table"]


class Column(Spec):
    """One column of a ``table`` port: its type and, optionally, its value range."""

    dtype: ScalarDType
    range: tuple[float, float] | None = Field(default=None, description="closed value range [lo, hi]")
    required: bool = Field(default=True, description="a request without this column is refused")
    description: str | None = None


class Port(Spec):
    """One named input or output of a module: its type, shape and meaning.

    ``shape`` uses -1 for a free dimension (the batch). Meaning fields are optional; a consumer
    that states one requires the producer to state the same (see ``registry.compat``). A ``table``
    port carries records with named, typed ``columns`` (one row per batch item).
    """

    dtype: DType
    shape: tuple[int, ...] = ()
    columns: dict[str, Column] | None = Field(default=None, description="the columns of a table port")
    space: str | None = Field(default=None, description="embedding space id, e.g. 'all-minilm-l6-v2'")
    tokenizer: str | None = Field(default=None, description="tokenizer hash, 'sha256:...'")
    labels: tuple[str, ...] | None = Field(default=None, description="label set, in output order")
    range: tuple[float, float] | None = Field(default=None, description="closed value range [lo, hi]")
    description: str | None = None

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        for d in shape:
            if d < -1 or d == 0:
                raise ValueError(f"dimension {d} is invalid: use a positive size or -1 (free)")
        return shape

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if labels is not None:
            if not labels:
                raise ValueError("an empty label set means nothing: omit it instead")
            if len(set(labels)) != len(labels):
                raise ValueError("labels must be unique")
        return labels

    @field_validator("range")
    @classmethod
    def _range(cls, rng: tuple[float, float] | None) -> tuple[float, float] | None:
        if rng is not None and rng[0] > rng[1]:
            raise ValueError(f"range low {rng[0]} is above high {rng[1]}")
        return rng

    @model_validator(mode="after")
    def _table_columns(self) -> Port:
        if self.dtype == "table" and not self.columns:
            raise ValueError("a table port needs its columns")
        if self.dtype != "table" and self.columns is not None:
            raise ValueError(f"columns are for table ports, not {self.dtype}")
        if self.dtype == "table" and len(self.shape) > 1:
            raise ValueError("a table port has one dimension (its rows): use shape [-1] or omit it")
        return self

    @model_validator(mode="after")
    def _labels_fit_shape(self) -> Port:
        if self.labels is not None and self.shape and self.shape[-1] not in (-1, len(self.labels)):
            raise ValueError(f"{len(self.labels)} labels do not fit the last dimension {self.shape[-1]} of shape")
        return self


PortMap = Annotated[dict[str, Port], Field(min_length=1)]


class Contract(Spec):
    inputs: PortMap
    outputs: PortMap


class Provenance(Spec):
    origin: str | None = Field(default=None, description="where the artifact came from: models:/..., runs:/..., a path")
    source_run: str | None = None
    training_data: str | None = None
    parents: tuple[str, ...] = ()
    code: str | None = None

    @field_validator("parents")
    @classmethod
    def _parents(cls, parents: tuple[str, ...]) -> tuple[str, ...]:
        for p in parents:
            try:
                refs.parse(p, require_qualifier=True)
            except SpecError as exc:
                raise ValueError(exc.reason) from None
        return parents


class Calibration(Spec):
    ece: float | None = Field(default=None, ge=0, le=1)
    held_out_accuracy: float | None = Field(default=None, ge=0, le=1)
    dataset: str | None = None
    samples: int | None = Field(default=None, ge=1)


class Metadata(Spec):
    description: str | None = None
    provenance: Provenance = Provenance()
    input_statistics: str | None = Field(
        default=None, description="file (in the module directory) with reference input statistics"
    )
    calibration: Calibration = Calibration()
    license: str
    stability: Stability = Stability.EXPERIMENTAL
    owners: tuple[str, ...] = Field(min_length=1)
    deprecation: dt.date | None = None
    metrics: dict[str, float] = {}


class Crash(enum.StrEnum):
    """How an injected crash kills the process running the module (see ``pipeline.faults``)."""

    SEGFAULT = "segfault"
    OOM = "oom"
    HANG = "hang"
    EXIT = "exit"


class Faults(Spec):
    """Deliberate fault injection (chaos testing of fallbacks, rollbacks and isolation)."""

    error_rate: float = Field(default=0.0, ge=0, le=1)
    delay_ms: float = Field(default=0.0, ge=0)
    after_seconds: float = Field(default=0.0, ge=0, description="healthy this long after loading, then faulty")
    crash: Crash | None = Field(default=None, description="segfault, oom, hang or exit on a faulty input")
    crash_rate: float = Field(default=1.0, ge=0, le=1, description="share of inputs that crash (with crash)")


class Runtime(Spec):
    """How modship runs the module: a kernel kind, its files and parameters.

    ``files`` name files or folders inside the module directory (an MLflow model is a folder).
    ``entrypoint`` is a ``python`` component, ``FILE.py:ClassName``. ``requirements`` are the
    Python packages the module needs (PEP 508); a system's modules must not conflict on them and
    the built Bento lists their union. ``batchable`` says that row *i* of every output depends on
    row *i* of the inputs only, so concurrent requests may share one call.
    """

    kind: str = Field(min_length=1)
    files: dict[str, str] = {}
    params: dict[str, Any] = {}
    entrypoint: str | None = None
    requirements: tuple[str, ...] = ()
    batchable: bool = False
    faults: Faults | None = None

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint(cls, v: str | None) -> str | None:
        if v is not None:
            path, sep, name = v.partition(":")
            if not sep or not path.endswith(".py") or not name.isidentifier():
                raise ValueError(f"{v!r} is not FILE.py:ClassName")
        return v

    @field_validator("requirements")
    @classmethod
    def _requirements(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from packaging.requirements import InvalidRequirement, Requirement

        for r in v:
            try:
                Requirement(r)
            except InvalidRequirement as exc:
                raise ValueError(f"requirement {r!r} is not valid: {exc}") from None
        return v


class Golden(Spec):
    """Golden inputs and expected outputs (a JSON file) checked before a build succeeds."""

    file: str
    tolerance: float = Field(default=1e-4, ge=0)


class ModuleManifest(Spec):
    api_version: Literal["modship.dev/v1alpha1"] = API_VERSION
    kind: Literal["Module"] = "Module"
    name: str
    role: Role
    runtime: Runtime
    contract: Contract
    metadata: Metadata
    golden: Golden | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not refs.NAME_RE.match(name):
            raise ValueError(f"invalid module name {name!r}: lowercase letters, digits, '.', '_', '-'")
        return name

    def files(self) -> list[str]:
        """Files the manifest names (relative to the module directory)."""
        named = list(self.runtime.files.values())
        if self.runtime.entrypoint:
            named.append(self.runtime.entrypoint.partition(":")[0])
        if self.metadata.input_statistics:
            named.append(self.metadata.input_statistics)
        if self.golden:
            named.append(self.golden.file)
        return named
