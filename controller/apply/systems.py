"""System use cases: validate against the registry, lock to a revision, contract-test and build."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from controller import ports
from controller.apply import modules as module_cases
from controller.compose import revision, validate
from controller.compose.revision import Lock
from controller.errors import IntegrityError, NotFound, SpecError, SpecErrors
from controller.pipeline import kernels
from controller.pipeline.engine import BadRequest, Pipeline, StepFailed
from controller.registry.versions import ModuleVersion
from controller.spec import parse, refs
from controller.spec.system import System
from controller.spec.system import load as load_system


@dataclass(frozen=True)
class Checked:
    system: System
    report: validate.Report
    local: dict[str, Path]  # pinned ref -> verified local copy


def check(
    registry: ports.Registry, system: System, *, cache: Path, today: dt.date | None = None, verify: bool = True
) -> Checked:
    """Every rule (resolution, compatibility, deprecation, stability) and, with ``verify``, every digest."""

    def resolve(ref: str) -> ModuleVersion | str:
        try:
            return registry.resolve(refs.parse(ref))
        except NotFound as exc:
            return str(exc)

    report = validate.check(system, resolve, today=today or dt.date.today())
    local: dict[str, Path] = {}
    extra: list[validate.Violation] = []
    if verify:
        for ref, mv in report.resolved.items():
            try:
                local[mv.ref] = module_cases.materialize(registry, mv, cache)
            except IntegrityError as exc:
                steps = [s.name for s in system.spec.steps if ref in revision.step_refs(s)]
                extra.append(validate.Violation(steps[0] if steps else "", "digest", str(exc), "integrity"))
    if extra:
        report = validate.Report(report.resolved, report.edges, report.violations + tuple(extra))
    return Checked(system, report, local)


def raise_violations(report: validate.Report, source: str) -> None:
    if report.violations:
        errors = [
            SpecError(v.reason, field=f"{v.step}: {v.field}" if v.step else v.field, source=source)
            for v in report.violations
        ]
        raise errors[0] if len(errors) == 1 else SpecErrors(errors)


def lock(checked: Checked) -> Lock:
    return revision.pin(checked.system, checked.report.resolved)


def load_input(path: Path) -> System | Lock:
    """A System spec or a SystemLock, by its kind."""
    docs = parse.load_documents(path)
    if len(docs) != 1:
        raise SpecError(f"expected one document, found {len(docs)}", source=str(path))
    if revision.is_lock(docs[0]):
        return revision.load(path)
    return load_system(path)


def contract_tests(lock_: Lock, local: dict[str, Path]) -> list[str]:
    """Golden inputs of every module and the system's smoke set; the failures, as readable lines."""
    failures: list[str] = []
    for ref, m in lock_.modules.items():
        try:
            failures += [f"{ref}: {f}" for f in kernels.golden_failures(local[ref], m.manifest)]
        except SpecError as exc:
            failures.append(f"{ref}: {exc}")
    smoke = lock_.system.spec.smoke
    if smoke:
        modules_root = _staged(local)
        pipe = Pipeline.load(lock_, modules_root, verify=False)
        try:
            for i, case in enumerate(smoke):
                try:
                    out = pipe.predict(case.input)
                except (BadRequest, StepFailed) as exc:
                    failures.append(f"smoke[{i}]: {exc}")
                    continue
                pred = (out.prediction or [{}])[0]
                if case.expect.label is not None and pred.get("label") != case.expect.label:
                    failures.append(f"smoke[{i}]: expected label {case.expect.label!r}, got {pred.get('label')!r}")
                conf = pred.get("confidence")
                if case.expect.min_confidence is not None and (conf is None or conf < case.expect.min_confidence):
                    failures.append(f"smoke[{i}]: confidence {conf} below {case.expect.min_confidence}")
        finally:
            pipe.close()
    return failures


def _staged(local: dict[str, Path]) -> Path:
    """A directory of symlinks laid out as the Bento's ``modules/`` (refs -> verified copies)."""
    import tempfile

    from controller.pipeline.engine import module_dir

    root = Path(tempfile.mkdtemp(prefix="modship-smoke-"))
    for ref, path in local.items():
        module_dir(root, ref).symlink_to(path, target_is_directory=True)
    return root
