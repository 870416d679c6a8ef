"""The Registry port on MLflow's Model Registry.

A module version is an MLflow model version whose source is the ``module/`` artifact folder of a
registration run. Everything modship needs is in the version's tags, written in the same call that
creates the version, so a version either exists complete or not at all:

- ``modship.state``     ``ready`` (a version without it is never resolved)
- ``modship.manifest``  the Module manifest (role, runtime, contract, metadata), JSON
- ``modship.files``     ``{path: sha256}`` of every artifact file; ``modship.digest`` over them
- ``modship.deprecation`` an override set by ``deprecate``

The folder also holds an ``MLmodel`` file carrying the MLflow signature of the contract, so MLflow's
UI and API show the schema. Library errors are translated at one choke point (``_translating``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import tenacity

from controller.errors import IntegrityError, ModshipError, NotFound, SpecError, Unavailable
from controller.registry import digests
from controller.registry.bundle import Bundle
from controller.registry.versions import ModuleVersion, effective_deprecation
from controller.spec.modules import Contract, ModuleManifest, Port
from controller.spec.refs import ModuleRef

EXPERIMENT = "modship-modules"
T = TypeVar("T")

# Fail fast and retry ourselves (MLflow's own default retries for minutes).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


@contextlib.contextmanager
def _translating(what: str, uri: str) -> Iterator[None]:
    import requests
    from mlflow.exceptions import MlflowException, RestException

    try:
        yield
    except ModshipError:
        raise
    except requests.RequestException as exc:
        raise Unavailable(f"MLflow at {uri} is unreachable ({type(exc).__name__}) while {what}") from exc
    except RestException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or (
            exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc.message)
        ):
            raise NotFound(f"{what}: not found") from exc
        if int(exc.get_http_status_code()) >= 500:  # type: ignore[no-untyped-call]
            raise Unavailable(f"MLflow at {uri} failed while {what}: {exc.message}") from exc
        raise ModshipError(f"MLflow refused {what}: {exc.message}") from exc
    except MlflowException as exc:
        msg = str(exc.message)
        if "API request to" in msg or "Max retries exceeded" in msg or "Connection" in msg:
            raise Unavailable(f"MLflow at {uri} is unreachable while {what}") from exc
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise NotFound(f"{what}: not found") from exc
        raise ModshipError(f"MLflow error while {what}: {msg.splitlines()[0]}") from exc
    except OSError as exc:
        raise Unavailable(f"MLflow storage error while {what}: {exc}") from exc


def _retrying(fn: Callable[[], T], *, attempts: int) -> T:
    retry = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(Unavailable),
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=0.2, max=2.0),
        reraise=True,
    )
    return retry(fn)


class MlflowRegistry:
    def __init__(self, uri: str, *, artifacts: Path | None = None, attempts: int = 3) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self._artifacts = artifacts
        self._attempts = attempts
        self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    # -- reads -------------------------------------------------------------------------------
    def modules(self) -> list[str]:
        def go() -> list[str]:
            with _translating("listing modules", self.uri):
                models = self._client.search_registered_models(max_results=1000)
                return sorted(m.name for m in models if m.tags.get("modship.role"))

        return _retrying(go, attempts=self._attempts)

    def versions(self, name: str) -> list[ModuleVersion]:
        def go() -> list[ModuleVersion]:
            with _translating(f"listing versions of {name!r}", self.uri):
                model = self._client.get_registered_model(name)
                aliases = _alias_index(model.aliases)
                found = self._client.search_model_versions(f"name = '{_quote(name)}'", max_results=10000)
                out = [self._record(v, aliases) for v in found if v.tags.get("modship.state") == "ready"]
                return sorted(out, key=lambda mv: mv.version)

        try:
            return _retrying(go, attempts=self._attempts)
        except NotFound:
            raise NotFound(f"module {name!r} is not registered") from None

    def resolve(self, ref: ModuleRef) -> ModuleVersion:
        if ref.version is None and ref.alias is None:
            versions = self.versions(ref.name)
            if not versions:
                raise NotFound(f"module {ref.name!r} has no valid version")
            return versions[-1]

        def go() -> ModuleVersion:
            with _translating(str(ref), self.uri):
                if ref.version is not None:
                    v = self._client.get_model_version(ref.name, str(ref.version))
                else:
                    v = self._client.get_model_version_by_alias(ref.name, str(ref.alias))
                if v.tags.get("modship.state") != "ready":
                    raise NotFound(f"{ref} is not a valid modship version (incomplete registration)")
                model = self._client.get_registered_model(ref.name)
                return self._record(v, _alias_index(model.aliases))

        try:
            return _retrying(go, attempts=self._attempts)
        except NotFound as exc:
            if "incomplete" in str(exc):
                raise
            raise NotFound(f"{ref} does not exist") from None

    # -- writes ------------------------------------------------------------------------------
    def register(self, bundle: Bundle) -> ModuleVersion:
        with tempfile.TemporaryDirectory(prefix="modship-register-") as tmp:
            staging = Path(tmp) / "module"
            shutil.copytree(bundle.root, staging)
            _write_mlmodel(staging, bundle.manifest, bundle.digest)
            files = digests.manifest(staging)
            return self._register_staged(bundle, staging, files)

    def _register_staged(self, bundle: Bundle, staging: Path, files: dict[str, str]) -> ModuleVersion:
        """Run -> artifacts -> (model) -> version with every tag, undoing what was done on failure."""
        manifest = bundle.manifest
        client, name = self._client, manifest.name
        digest = digests.combined(files)
        undo: list[Callable[[], Any]] = []
        try:
            with _translating(f"registering {name}", self.uri):
                exp_id = self._experiment_id()
                run = client.create_run(exp_id, run_name=f"register-{name}", tags={"modship.module": name})
                undo.append(lambda: client.delete_run(run.info.run_id))
                client.log_artifacts(run.info.run_id, str(staging), "module")
                with contextlib.redirect_stdout(io.StringIO()):  # MLflow prints run links to stdout
                    client.set_terminated(run.info.run_id)
                if self._ensure_model(manifest):
                    undo.append(lambda: client.delete_registered_model(name))
                tags = {
                    "modship.state": "ready",
                    "modship.role": manifest.role.value,
                    "modship.digest": digest,
                    "modship.source_digest": bundle.digest,
                    "modship.files": json.dumps(files, sort_keys=True),
                    "modship.manifest": manifest.model_dump_json(by_alias=True, exclude_none=True),
                    "modship.stability": manifest.metadata.stability.value,
                }
                created = client.create_model_version(
                    name,
                    source=f"{run.info.artifact_uri}/module",
                    run_id=run.info.run_id,
                    tags=tags,
                    description=manifest.metadata.description,
                )
                undo.append(lambda: client.delete_model_version(name, created.version))
                self._after_create(created)
                return self.resolve(ModuleRef(name, version=int(created.version)))
        except BaseException:
            for step in reversed(undo):
                with contextlib.suppress(Exception):
                    step()
            raise

    def _after_create(self, created: Any) -> None:
        """Hook between creating the version and returning it (tests inject failures here)."""

    def _experiment_id(self) -> str:
        exp = self._client.get_experiment_by_name(EXPERIMENT)
        if exp is not None:
            return str(exp.experiment_id)
        location = self._artifacts.absolute().as_uri() if self._artifacts else None
        return str(self._client.create_experiment(EXPERIMENT, artifact_location=location))

    def _ensure_model(self, manifest: ModuleManifest) -> bool:
        """Create the registered model if missing; True when this call created it."""
        from mlflow.exceptions import MlflowException

        try:
            existing = self._client.get_registered_model(manifest.name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        else:
            role = existing.tags.get("modship.role")
            if role and role != manifest.role.value:
                raise SpecError(
                    f"module {manifest.name!r} is registered with role {role!r}, not {manifest.role.value!r}",
                    field="role",
                )
            return False
        self._client.create_registered_model(
            manifest.name,
            tags={"modship.role": manifest.role.value},
            description=manifest.metadata.description,
        )
        return True

    def fetch(self, version: ModuleVersion, dest: Path) -> Path:
        import mlflow.artifacts

        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest.parent) as tmp:

            def go() -> str:
                with _translating(f"downloading {version.ref}", self.uri):
                    return str(
                        mlflow.artifacts.download_artifacts(
                            artifact_uri=version.source, dst_path=tmp, tracking_uri=self.uri
                        )
                    )

            local = Path(_retrying(go, attempts=self._attempts))
            digests.verify(local, version.files, what=version.ref)
            if dest.exists():
                shutil.rmtree(dest)
            local.rename(dest)
        return dest

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self.resolve(ModuleRef(name, version=version))
        with _translating(f"setting {name}@{alias}", self.uri):
            _retrying(
                lambda: self._client.set_registered_model_alias(name, alias, str(version)),
                attempts=self._attempts,
            )

    def delete_alias(self, name: str, alias: str) -> None:
        from mlflow.exceptions import MlflowException

        with _translating(f"deleting {name}@{alias}", self.uri), contextlib.suppress(MlflowException):
            self._client.delete_registered_model_alias(name, alias)

    def deprecate(self, name: str, version: int, after: dt.date | None) -> None:
        self.resolve(ModuleRef(name, version=version))
        with _translating(f"deprecating {name}@{version}", self.uri):
            if after is None:
                self._client.delete_model_version_tag(name, str(version), "modship.deprecation")
            else:
                self._client.set_model_version_tag(name, str(version), "modship.deprecation", after.isoformat())

    # -- internals ---------------------------------------------------------------------------
    def _record(self, v: Any, aliases: dict[int, tuple[str, ...]]) -> ModuleVersion:
        try:
            manifest = ModuleManifest.model_validate_json(v.tags["modship.manifest"])
            files = json.loads(v.tags["modship.files"])
        except (KeyError, ValueError) as exc:
            raise IntegrityError(f"{v.name}@{v.version}: registry metadata is unreadable ({exc})") from exc
        number = int(v.version)
        return ModuleVersion(
            name=v.name,
            version=number,
            manifest=manifest,
            digest=v.tags.get("modship.digest", ""),
            files=files,
            source=v.source,
            aliases=aliases.get(number, ()),
            created=dt.datetime.fromtimestamp(v.creation_timestamp / 1000, dt.UTC),
            deprecation=effective_deprecation(manifest, v.tags.get("modship.deprecation")),
            source_digest=v.tags.get("modship.source_digest", ""),
        )


def _alias_index(aliases: dict[str, str]) -> dict[int, tuple[str, ...]]:
    out: dict[int, list[str]] = {}
    for alias, version in aliases.items():
        out.setdefault(int(version), []).append(alias)
    return {k: tuple(sorted(v)) for k, v in out.items()}


def _quote(name: str) -> str:
    return name.replace("'", "''")


def _schema(ports: dict[str, Port]) -> Any:
    """The MLflow schema of a side of the contract: tensors when every port is one, else columns (a
    table port contributes its columns)."""
    import numpy as np
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    if all(p.dtype not in ("string", "table") for p in ports.values()):
        return Schema([TensorSpec(np.dtype(p.dtype), p.shape or (-1,), name) for name, p in ports.items()])
    col = {
        "string": "string",
        "float32": "float",
        "float64": "double",
        "int32": "integer",
        "int64": "long",
        "uint8": "integer",
        "bool": "boolean",
    }
    specs: list[Any] = []
    for name, p in ports.items():
        if p.columns is not None:
            specs += [ColSpec(col[c.dtype], cname, required=c.required) for cname, c in p.columns.items()]
        else:
            specs.append(ColSpec(col[p.dtype], name))
    return Schema(specs)


def _write_mlmodel(root: Path, manifest: ModuleManifest, source_digest: str) -> None:
    """An MLmodel file with the contract's signature, so MLflow shows the schema. Its content follows
    from the module's files alone (no creation time, a uuid derived from their digest): the same
    files registered twice, in one registry or two, get the same digest and so the same revisions
    (and images). When the version was registered is MLflow's own ``creation_timestamp``."""
    from mlflow.models import Model
    from mlflow.models.signature import ModelSignature

    contract: Contract = manifest.contract
    model = Model(
        signature=ModelSignature(inputs=_schema(contract.inputs), outputs=_schema(contract.outputs)),
        metadata={"modship": {"role": manifest.role.value, "runtime": manifest.runtime.kind}},
        utc_time_created="1970-01-01 00:00:00.000000",
        model_uuid=uuid.uuid5(uuid.NAMESPACE_URL, f"modship:{source_digest}").hex,
    )
    model.save(str(root / "MLmodel"))
