from __future__ import annotations

import pytest

from controller.errors import SpecError
from controller.spec import refs


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("topic-head", refs.ModuleRef("topic-head")),
        ("topic-head@3", refs.ModuleRef("topic-head", version=3)),
        ("topic-head@stable", refs.ModuleRef("topic-head", alias="stable")),
        (" enc.v2_x@canary ", refs.ModuleRef("enc.v2_x", alias="canary")),
    ],
)
def test_parse(text: str, expected: refs.ModuleRef) -> None:
    assert refs.parse(text) == expected
    assert refs.parse(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("Topic", "invalid module name"),
        ("head@", "empty version"),
        ("head@0", "versions start at 1"),
        ("head@latest", "reserved"),
        ("head@v2", "reserved"),
        ("head@Stable!", "invalid alias"),
        ("", "invalid module name"),
    ],
)
def test_bad_refs_name_the_field(text: str, needle: str) -> None:
    with pytest.raises(SpecError) as info:
        refs.parse(text, field="steps[0].module")
    assert needle in str(info.value)
    assert info.value.field == "steps[0].module"


def test_qualifier_required() -> None:
    with pytest.raises(SpecError, match="needs a version or alias"):
        refs.parse("head", require_qualifier=True)
