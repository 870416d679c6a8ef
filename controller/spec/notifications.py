"""Who is told about rollouts, and where: sinks and per-system subscriptions.

    # $MODSHIP_HOME/notifications.yaml (or the file MODSHIP_NOTIFICATIONS / --notifications names)
    sinks:
      - name: ops
        type: webhook                       # webhook | slack | teams
        url: {env: OPS_WEBHOOK_URL}         # a secret: from the environment or a file, never inline
        hmacKey: {file: /etc/modship/ops.key}
      - {name: ml-team, type: slack, url: {env: SLACK_WEBHOOK_URL}}
    subscriptions:
      - {system: topic-classifier, sinks: [ml-team], triggers: [aborted, promoted, awaitingApproval]}
      - {system: "*", sinks: [ops]}       # no triggers: every transition
    links: {dashboard: "http://127.0.0.1:8765", mlflow: "http://mlflow:5000"}

Secrets (a webhook URL holds a token; an HMAC key) are read from ``env`` or ``file`` when a message
is sent; the spec keeps only where they are, so they never reach logs, status or events. A plain
``url`` string is allowed for receivers without a token (a local receiver, a test).
"""

from __future__ import annotations

import enum
import os
from pathlib import Path

from pydantic import Field, model_validator

from controller.errors import SpecError
from controller.spec import parse
from controller.spec.base import Spec
from controller.spec.rollout import Duration


class Secret(Spec):
    """Where a secret is: an environment variable or a file (its content, stripped)."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one(self) -> Secret:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env, file")
        return self

    def reveal(self, field: str) -> str:
        """The secret's value; SpecError naming the field (never the value) when it is not there."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise SpecError(f"environment variable {self.env} is not set", field=field)
            return value
        assert self.file is not None
        try:
            return self.file.read_text().strip()
        except OSError as exc:
            raise SpecError(f"cannot read {self.file}: {exc.strerror}", field=field) from None


class SinkType(enum.StrEnum):
    WEBHOOK = "webhook"  # the CloudEvent itself (structured JSON), HMAC-signed when a key is given
    SLACK = "slack"  # a Slack incoming-webhook message (blocks)
    TEAMS = "teams"  # a Microsoft Teams incoming-webhook message (MessageCard)


class Trigger(enum.StrEnum):
    """What a subscription asks to hear about (none given: every transition)."""

    STARTED = "started"
    PROMOTED = "promoted"
    ABORTED = "aborted"
    ROLLED_BACK = "rolledBack"
    AWAITING_APPROVAL = "awaitingApproval"
    ANALYSIS_INCONCLUSIVE = "analysisInconclusive"
    METRICS_DOWN = "metricsDown"
    GATE = "gate"  # a gate held, failed or let the rollout through


class Sink(Spec):
    name: str = Field(min_length=1, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    type: SinkType = SinkType.WEBHOOK
    url: str | Secret
    hmac_key: Secret | None = Field(default=None, description="webhook only: sign bodies (HMAC-SHA256)")
    timeout: Duration = 5.0
    attempts: int = Field(default=5, ge=1, le=20, description="tries before the event is dead-lettered")
    backoff: Duration = Field(default=0.5, description="first wait between tries (doubling, at most 30s)")

    @model_validator(mode="after")
    def _hmac(self) -> Sink:
        if self.hmac_key is not None and self.type is not SinkType.WEBHOOK:
            raise ValueError("hmacKey is for sinks of type webhook")
        return self

    def reveal_url(self) -> str:
        return self.url if isinstance(self.url, str) else self.url.reveal(f"sinks.{self.name}.url")


class Subscription(Spec):
    system: str = Field(default="*", description="a system name, or * for every system")
    sinks: tuple[str, ...] = Field(min_length=1)
    triggers: tuple[Trigger, ...] = Field(default=(), description="none: every transition")


class Links(Spec):
    dashboard: str | None = Field(default=None, description="the controller's URL (links to /dashboard/)")
    mlflow: str | None = Field(default=None, description="the MLflow UI (links to model versions)")


class Notifications(Spec):
    sinks: tuple[Sink, ...] = ()
    subscriptions: tuple[Subscription, ...] = ()
    links: Links = Links()
    queue: int = Field(default=1000, ge=1, description="events waiting per sink before new ones are dead-lettered")

    @model_validator(mode="after")
    def _refs(self) -> Notifications:
        names = [s.name for s in self.sinks]
        if len(set(names)) != len(names):
            raise ValueError("sink names must be unique")
        for i, sub in enumerate(self.subscriptions):
            for n in sub.sinks:
                if n not in names:
                    raise ValueError(f"subscriptions[{i}]: unknown sink {n!r}")
        return self

    def sink(self, name: str) -> Sink:
        for s in self.sinks:
            if s.name == name:
                return s
        raise SpecError(f"no sink {name!r} (known: {', '.join(s.name for s in self.sinks) or 'none'})", field="sink")


def load(path: Path) -> Notifications:
    """The notifications in ``path``; none when the file does not exist."""
    if not path.exists():
        return Notifications()
    return parse.load(Notifications, path)
