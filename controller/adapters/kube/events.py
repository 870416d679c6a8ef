"""core/v1 Events about a Rollout, one per decision Event; best effort (never raises)."""

from __future__ import annotations

import datetime as dt
import logging

from controller.adapters.kube.api import EVENTS, Json, Kube, KubeUnavailable
from controller.adapters.kube.names import Owner
from controller.plan.actions import Event

log = logging.getLogger("modship.kubernetes")


class EventRecorder:
    """core/v1 Events about a Rollout, one per decision Event; best effort (never raises)."""

    def __init__(self, kube: Kube, *, instance: str, component: str = "modship-operator") -> None:
        self.kube, self.instance, self.component = kube, instance, component

    def record(self, owner: Owner, event: Event) -> None:
        """Post an Event under a generated name."""
        kind = "Warning" if event.warning else "Normal"
        self.post(owner, {"reason": event.reason, "message": event.message[:1024], "type": kind})

    def post(self, owner: Owner, event: Json) -> None:
        """Post ``{name?, reason, message, type}``; an Event of that name posted before is left as it is."""
        stamp = dt.datetime.now(dt.UTC)
        meta = {"name": event["name"]} if event.get("name") else {"generateName": f"{owner.name}."}
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {**meta, "namespace": owner.namespace},
            "involvedObject": {
                "apiVersion": "modship.dev/v1alpha1",
                "kind": "Rollout",
                "name": owner.name,
                "namespace": owner.namespace,
                "uid": owner.uid,
            },
            "reason": event["reason"],
            "message": event.get("message", ""),
            "type": event.get("type", "Normal"),
            "source": {"component": self.component},
            "reportingComponent": f"modship.dev/{self.component}",
            "reportingInstance": self.instance,
            "action": event["reason"],
            "eventTime": stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "firstTimestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
        }
        try:
            self.kube.create(EVENTS, owner.namespace, body)
        except KubeUnavailable as exc:
            if exc.reason != "AlreadyExists":
                log.warning("%s/%s: could not post event %s: %s", owner.namespace, owner.name, event["reason"], exc)
        except Exception as exc:  # events are for people; never block a rollout on them
            log.warning("%s/%s: could not post event %s: %s", owner.namespace, owner.name, event["reason"], exc)
