"""The ``builtin`` metrics provider on Kubernetes (the MetricsSource port): there is no modship
router there to read telemetry from, so every check of it reports an error."""

from __future__ import annotations

from controller.plan.observations import QueryContext, Sample
from controller.spec.rollout import Check


class NoRouterSource:
    """The ``builtin`` provider on Kubernetes: there is no modship router to read telemetry from."""

    MESSAGE = (
        "builtin metrics come from the local modship router (modship up); on Kubernetes use provider "
        "prometheus (spec.prometheus or MODSHIP_PROMETHEUS_URL)"
    )

    def online(self) -> bool:
        return False

    def sample(self, check: Check, ctx: QueryContext) -> Sample:
        return Sample(value=None, error=self.MESSAGE)
