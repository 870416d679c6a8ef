"""The CLI's way to a system on Kubernetes: the same ``call(method, path, body)`` as ``LocalClient``,
answered from and written to the Rollout resource (named like the system) instead of a local API.

    GET  /v1/systems                       summaries of the namespace's Rollouts
    GET  /v1/systems/{name}                the ``status -o json`` document (views.status' shape)
    GET  /v1/systems/{name}/history        revisions seen in the status history, numbered
    GET  /v1/systems/{name}/events         the Rollout's Kubernetes Events
    POST /v1/systems/{name}/pause|resume|abort|retry|rollback
    POST /v1/systems/{name}/promote        {"revision": r, "modules": [...], "full": bool}
    POST /v1/systems/{name}/undo           {"toRevision": n}
    POST /v1/systems/{name}/toggle         {"flag": f, "enabled": bool, "percent": p}

Commands are ``spec`` fields (``revision``, ``modules``, ``paused``) and annotations holding the unix
time they were given (``modship.dev/abort`` ...), which the operator consumes once. Revisions are
built images on Kubernetes, so ``promote`` names one; composing it from modules is CI's job.
Revision numbers (``history``, ``undo --to-revision``) count revisions in the order the Rollout's
status history (its last 20 outcomes) first names them.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from controller.adapters.kube import api as k8s
from controller.adapters.kube.rollouts import CONTROLS, TOGGLES, entry_of
from controller.entrypoints import views
from controller.errors import ModshipError, NotFound, SpecError
from controller.plan.status import Phase, RolloutStatus
from controller.spec.rollout import CanaryStep, Rollout

_REVISION = re.compile(r"^r[0-9a-f]{12}$")
_IN_FLIGHT = (Phase.PROGRESSING, Phase.PAUSED)


class KubernetesClient:
    """``call`` like ``LocalClient.call``; ``context``/``namespace`` as in kubectl."""

    def __init__(
        self, *, kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None
    ) -> None:
        api, default_ns = k8s.connect(kubeconfig, context, pool=2)
        self.kube = k8s.Kube(api, field_manager="modship-cli")
        self.namespace = namespace or default_ns

    def close(self) -> None:
        api: Any = self.kube.api
        api.close()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        parts = path.strip("/").split("/")
        if parts[:2] != ["v1", "systems"] or len(parts) > 4:
            raise NotFound(f"{method} {path}: no such request")
        name, verb, body = (parts[2] if len(parts) > 2 else ""), (parts[3] if len(parts) > 3 else ""), body or {}
        match method.upper(), verb:
            case "GET", "" if not name:
                return [self._summary(obj) for obj in self.kube.items(k8s.ROLLOUTS, self.namespace)]
            case "GET", "":
                return self.status(name)
            case "GET", "history":
                return self.history(name)
            case "GET", "events":
                return self.events(name, limit=int(params.get("limit", 200)))
            case "POST", "pause" | "resume" | "abort" | "retry" | "rollback":
                return self.command(name, verb)
            case "POST", "promote":
                return self.promote(name, body)
            case "POST", "undo":
                return self.undo(name, body.get("toRevision"))
            case "POST", "toggle":
                return self.toggle(name, body)
        raise SpecError(f"{method} {path} is not available on Kubernetes (apply the Rollout with kubectl or GitOps)")

    # -- reading -----------------------------------------------------------------------------------
    def _get(self, name: str) -> dict[str, Any]:
        obj = self.kube.get(k8s.ROLLOUTS, self.namespace, name)
        if obj is None:
            raise NotFound(f"system {name!r} has no Rollout in namespace {self.namespace}")
        return obj

    def _parsed(self, obj: dict[str, Any]) -> tuple[Rollout | None, RolloutStatus]:
        e = entry_of(obj, trusted=True)
        try:
            r: Rollout | None = e.rollout()
        except SpecError:
            r = None
        assert e.status is not None
        return r, e.status

    def _summary(self, obj: dict[str, Any]) -> dict[str, Any]:
        st, spec = obj.get("status") or {}, obj.get("spec") or {}
        return {
            "system": obj["metadata"]["name"],
            "phase": st.get("phase", ""),
            "stable": st.get("stableRevision"),
            "canary": st.get("canaryRevision"),
            "weight": st.get("weight", 0.0),
            "target": spec.get("revision"),
            "reason": st.get("reason", ""),
        }

    def status(self, name: str) -> dict[str, Any]:
        obj = self._get(name)
        r, s = self._parsed(obj)
        st, spec = obj.get("status") or {}, obj.get("spec") or {}
        numbers = _numbers(s, spec.get("revision"))
        in_flight = s.canary is not None and s.phase in _IN_FLIGHT

        def revision(rev: str | None) -> dict[str, Any] | None:
            if rev is None:
                return None
            modules = list(spec.get("modules") or []) if rev == spec.get("revision") else []
            return {"revision": rev, "number": numbers.get(rev), "modules": modules}

        window = r.spec.policies.rollback_window if r is not None else None
        steps: list[CanaryStep] = r.steps if r is not None else []
        analysis: dict[str, Any] = {"step": {}, "background": {}}
        if r is not None:
            known = {c.name for c in r.spec.analysis.checks}
            analysis = {
                "step": {
                    n: views._run(r, n, run, background=False) for n, run in s.step_analysis.items() if n in known
                },
                "background": {
                    n: views._run(r, n, run, background=True) for n, run in s.background.items() if n in known
                },
            }
        doc = {
            "system": name,
            "namespace": self.namespace,
            "phase": st.get("phase") or s.phase.value,
            "reason": st.get("reason", s.reason),
            "message": st.get("message", s.message),
            "target": spec.get("revision"),
            "stable": revision(s.stable),
            "canary": revision(s.canary) if in_flight or s.phase is Phase.ABORTED else None,
            "previousStable": s.previous_stable,
            "rollbackWindowEndsAt": s.promoted_at + window if s.previous_stable and s.promoted_at and window else None,
            "step": s.step,
            "steps": [views._step(i, st_, s) for i, st_ in enumerate(steps)],
            "weight": s.traffic.weight if in_flight else 0.0,
            "headerRoute": list(s.traffic.header_route) if in_flight and s.traffic.header_route else None,
            "mirror": s.traffic.mirror if in_flight else 0.0,
            "flags": {k: {"enabled": v[0], "percent": v[1]} for k, v in s.flags.items()},
            "toggles": entry_of(obj, trusted=False).toggles,
            "paused": bool(spec.get("paused", False)),
            "analysis": analysis,
            "traffic": {},  # per-revision request figures live in Prometheus on Kubernetes
            "router": None,
            "managed": int(st.get("observedGeneration") or 0) == int(obj["metadata"].get("generation") or 0),
            "conditions": st.get("conditions") or [],
            "history": [
                {"revision": h.revision, "outcome": h.outcome, "at": h.at, "reason": h.reason} for h in s.history
            ],
        }
        doc["drift"] = views.drift(doc)
        return doc

    def history(self, name: str) -> list[dict[str, Any]]:
        obj = self._get(name)
        _, s = self._parsed(obj)
        numbers = _numbers(s, (obj.get("spec") or {}).get("revision"))
        out = []
        for rev, number in numbers.items():
            role = "stable" if rev == s.stable else "canary" if rev == s.canary and s.phase in _IN_FLIGHT else None
            outcomes = [{"outcome": h.outcome, "at": h.at, "reason": h.reason} for h in s.history if h.revision == rev]
            first = min((h.at for h in s.history if h.revision == rev), default=None)
            out.append(
                {
                    "number": number,
                    "revision": rev,
                    "created": first,
                    "modules": [],
                    "changed": [],
                    "overrides": [],
                    "role": role,
                    "outcomes": outcomes,
                }
            )
        return out

    def events(self, name: str, *, limit: int = 200) -> list[dict[str, Any]]:
        obj = self._get(name)
        selector = f"involvedObject.uid={obj['metadata']['uid']}"
        url = k8s.path(k8s.EVENTS, self.namespace)
        items = self.kube.request("GET", url, query=[("fieldSelector", selector)]).get("items") or []
        rows = []
        for ev in items:
            stamp = ev.get("eventTime") or ev.get("lastTimestamp") or ev["metadata"].get("creationTimestamp")
            rows.append(
                {
                    "at": _unix(stamp),
                    "reason": ev.get("reason", ""),
                    "message": ev.get("message", ""),
                    "warning": ev.get("type") == "Warning",
                }
            )
        return sorted(rows, key=lambda x: x["at"])[-limit:]

    # -- commands -----------------------------------------------------------------------------------
    def _patch(
        self, name: str, *, spec: dict[str, Any] | None = None, annotations: dict[str, str] | None = None
    ) -> None:
        body: dict[str, Any] = {}
        if spec:
            body["spec"] = spec
        if annotations:
            body["metadata"] = {"annotations": annotations}
        self.kube.merge(k8s.ROLLOUTS, self.namespace, name, body)

    def command(self, name: str, verb: str) -> dict[str, Any]:
        now = f"{time.time():.6f}"
        match verb:
            case "pause":
                self._get(name)
                self._patch(name, spec={"paused": True})
            case "resume":
                self._get(name)
                self._patch(name, spec={"paused": False}, annotations={CONTROLS["resume"]: now})
            case "abort" | "retry":
                self._get(name)
                self._patch(name, annotations={CONTROLS[verb]: now})
            case "rollback":
                _, s = self._parsed(self._get(name))
                if s.canary is not None and s.phase in _IN_FLIGHT:
                    self._patch(name, annotations={CONTROLS["abort"]: now})
                    return {"system": name, "message": f"aborting canary {s.canary}: 100 % to stable {s.stable}"}
                d = self.undo(name, None)
                return {"system": name, "message": f"rolling back to revision {d['number']} ({d['revision']})"}
        return {"system": name, "command": verb}

    def promote(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        revision, modules, full = body.get("revision"), body.get("modules") or [], bool(body.get("full"))
        if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
            raise SpecError("modules must be a list of NAME@VERSION", field="modules")
        obj = self._get(name)
        _, s = self._parsed(obj)
        now = time.time()
        if revision is None:
            if not full or body.get("system") is not None:
                raise SpecError(
                    'on Kubernetes, promote names a built revision: {"revision": "r<12 hex>"}', field="revision"
                )
            self._patch(name, annotations={CONTROLS["promote_full"]: f"{now:.6f}"})
            return {"system": name, "promoteFull": True}
        if not isinstance(revision, str) or not _REVISION.match(revision):
            raise SpecError(f"{revision!r} is not a revision (r followed by 12 hex digits)", field="revision")
        if s.canary is not None and s.phase in _IN_FLIGHT and s.canary != revision:
            raise ModshipError(f"{name}: a rollout of {s.canary} is in progress (abort it or wait)")
        if revision == s.stable and not (s.canary is not None and s.phase in _IN_FLIGHT):
            raise ModshipError(f"{name}: {revision} is already stable: nothing to promote")
        # a new target starts clean: a standing pause does not carry over
        self._patch(
            name,
            spec={"revision": revision, "modules": modules, "paused": False},
            annotations={CONTROLS["promote_full"]: f"{now + 0.001:.6f}"} if full else None,
        )
        numbers = _numbers(s, revision)
        return {"system": name, "revision": revision, "number": numbers[revision], "changes": modules, "overrides": []}

    def undo(self, name: str, to: Any) -> dict[str, Any]:
        if to is not None and (not isinstance(to, int) or isinstance(to, bool)):
            raise SpecError("toRevision must be a revision number", field="toRevision")
        obj = self._get(name)
        _, s = self._parsed(obj)
        numbers = _numbers(s, (obj.get("spec") or {}).get("revision"))
        if to is None:
            older = [h.revision for h in s.history if h.outcome in ("Promoted", "Initial", "RolledBack")]
            prev = s.previous_stable or next((x for x in reversed(older) if x != s.stable), None)
            if prev is None:
                raise ModshipError(f"{name}: no earlier revision to go back to")
            rev = prev
        else:
            rev = next((r for r, n in numbers.items() if n == to), "")
            if not rev:
                raise NotFound(f"{name} has no revision {to} (see history)")
        if rev == s.stable and not (s.canary is not None and s.phase in _IN_FLIGHT):
            raise ModshipError(f"{name}: revision {numbers[rev]} ({rev}) is already stable")
        self._patch(name, spec={"revision": rev, "modules": [f"undo to revision {numbers[rev]}"], "paused": False})
        return {"system": name, "revision": rev, "number": numbers[rev]}

    def toggle(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        flag, enabled, percent = body.get("flag"), body.get("enabled"), body.get("percent", 100.0)
        if not isinstance(flag, str) or not flag:
            raise SpecError("give the flag's name", field="flag")
        if not isinstance(enabled, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
            raise SpecError("enabled must be true/false and percent 0-100", field="percent")
        toggles = entry_of(self._get(name), trusted=False).toggles
        toggles[flag] = {"enabled": enabled, "percent": float(percent)}
        self._patch(name, annotations={TOGGLES: json.dumps(toggles, sort_keys=True)})
        return {"system": name, "flag": flag, "enabled": enabled, "percent": percent}


def _numbers(s: RolloutStatus, target: str | None) -> dict[str, int]:
    """Revision numbers in order of first appearance in the status history (then the target)."""
    out: dict[str, int] = {}
    for rev in [h.revision for h in s.history] + [x for x in (s.stable, s.canary, target) if x]:
        if rev and rev not in out:
            out[rev] = len(out) + 1
    return out


def _unix(stamp: str | None) -> float:
    import datetime as dt

    if not stamp:
        return 0.0
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
