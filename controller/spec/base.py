"""The base model every spec uses: frozen, strict about unknown fields, camelCase on the wire."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class Spec(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        str_strip_whitespace=True,
    )

    def dump(self) -> dict[str, object]:
        """The wire form (camelCase, no unset defaults left as None)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
