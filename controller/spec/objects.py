"""Kubernetes-style object metadata shared by System and Rollout documents."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from controller.spec.base import Spec

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class ObjectMeta(Spec):
    name: str
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _dns(cls, name: str) -> str:
        if not DNS_LABEL.match(name) or len(name) > 52:
            raise ValueError(
                f"invalid name {name!r}: lowercase letters, digits and '-', starting and ending alphanumeric, "
                "at most 52 characters (it names Kubernetes objects)"
            )
        return name
