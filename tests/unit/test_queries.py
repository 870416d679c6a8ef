"""PromQL templates: strict rendering, escaping, template references, standard variables."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.errors import SpecError
from controller.plan import queries
from controller.plan.observations import QueryContext

CTX = QueryContext(system="topic-classifier", revision="r2", stable_revision="r1", window_s=30.0)


@pytest.mark.parametrize("placeholder", ["{{system}}", "{{ system }}", "{{  system\t}}"])
def test_render_fills_placeholders_with_any_spacing(placeholder: str) -> None:
    assert queries.render(f'up{{job="{placeholder}"}}', {"system": "tc"}) == 'up{job="tc"}'


def test_missing_variable_is_a_spec_error_naming_it_and_the_template() -> None:
    template = 'rate(x{ns="{{ namespace }}",rev="{{ revision }}",t="{{ team }}"}[{{ window }}])'
    with pytest.raises(SpecError) as err:
        queries.render(template, {"revision": "r2", "window": "30s"})
    assert "namespace, team" in str(err.value)
    assert template in str(err.value)
    assert err.value.field == "query"


def test_an_empty_value_is_a_value_not_a_missing_variable() -> None:
    assert queries.render('x{a="{{ a }}"}', {"a": ""}) == 'x{a=""}'


@pytest.mark.parametrize(
    ("template", "value", "expected"),
    [
        ('x{a="{{ v }}"}', 'r"} or vector(1) #', 'x{a="r\\"} or vector(1) #"}'),
        ('x{a="{{ v }}"}', "a\\b", 'x{a="a\\\\b"}'),
        ('x{a="{{ v }}"}', "two\nlines", 'x{a="two\\nlines"}'),
        ("x{a='{{ v }}'}", "it's", "x{a='it\\'s'}"),
        ("x{a='{{ v }}'}", 'say "hi"', "x{a='say \"hi\"'}"),
        ("x{a=`{{ v }}`}", 'raw "\\ as is', 'x{a=`raw "\\ as is`}'),
        ('x{a="\\"{{ v }}"}', 'q"', 'x{a="\\"q\\""}'),  # an escaped quote does not end the string
        ('x{a="{{ v }}",b="{{ v }}"}', '"', 'x{a="\\"",b="\\""}'),
    ],
)
def test_values_are_escaped_for_the_string_they_stand_in(template: str, value: str, expected: str) -> None:
    assert queries.render(template, {"v": value}) == expected


@pytest.mark.parametrize(
    ("template", "value"),
    [
        ("rate(x[{{ v }}])", "30s]) or vector(1) #"),
        ("rate(x[{{ v }}])", 'a"b'),
        ("rate(x[{{ v }}])", ""),
        ("x{a=`{{ v }}`}", "back`tick"),
    ],
)
def test_values_that_cannot_stand_where_they_are_used_are_rejected(template: str, value: str) -> None:
    with pytest.raises(SpecError, match="variable v="):
        queries.render(template, {"v": value})


@given(st.text())
def test_a_quoted_value_reads_back_unchanged(value: str) -> None:
    # PromQL double-quoted strings escape like Go's, and so like JSON for \\ \" \n \r
    rendered = queries.render('"{{ v }}"', {"v": value})
    assert json.loads(rendered, strict=False) == value


def test_template_references() -> None:
    assert queries.resolve("template:error-rate") == queries.TEMPLATES["error-rate"]
    assert queries.resolve("sum(up)") == "sum(up)"
    rendered = queries.render("template:request-count", queries.variables(CTX, revision="r2"))
    expected = 'sum(increase(modship_requests_total{system="topic-classifier",revision="r2"}[30s]))'
    assert rendered == expected


def test_an_unknown_template_is_a_spec_error_listing_the_known_ones() -> None:
    with pytest.raises(SpecError, match=r"unknown query template 'eror-rate' \(known: .*error-rate"):
        queries.render("template:eror-rate", {})


@pytest.mark.parametrize("name", sorted(queries.TEMPLATES))
def test_every_template_renders_with_the_standard_variables(name: str) -> None:
    rendered = queries.render(f"template:{name}", queries.variables(CTX, revision="r1"))
    assert "{{" not in rendered
    assert "}}" not in rendered
    assert rendered.count("(") == rendered.count(")")
    assert rendered.count("{") == rendered.count("}")
    assert re.search(r'revision="r1"|service_version="r1"', rendered)
    assert "[30s]" in rendered


def test_variables() -> None:
    v = queries.variables(CTX, revision="r1")
    assert v == {
        "system": "topic-classifier",
        "revision": "r1",
        "stable_revision": "r1",
        "canary_revision": "r2",
        "window": "30s",
    }
    ctx = QueryContext(
        system="s", revision="c", stable_revision="s1", window_s=0.25, namespace="ml", extra={"team": "nlp"}
    )
    v = queries.variables(ctx, revision="c")
    assert (v["window"], v["namespace"], v["team"]) == ("250ms", "ml", "nlp")


@pytest.mark.parametrize(("seconds", "text"), [(30, "30s"), (300, "300s"), (0.25, "250ms"), (1.5, "1500ms")])
def test_window_is_a_promql_duration(seconds: float, text: str) -> None:
    assert queries.duration(seconds) == text


def test_a_zero_window_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="window must be positive"):
        queries.duration(0.0001)


def test_extra_variables_cannot_redefine_standard_ones() -> None:
    ctx = QueryContext(system="s", revision="c", stable_revision="s1", window_s=30, extra={"revision": "x"})
    with pytest.raises(SpecError, match="cannot redefine revision"):
        queries.variables(ctx, revision="c")
