"""The Prometheus MetricsSource against a real Prometheus scraping a real exporter every second.

Prometheus syncs new scrape targets on a fixed 5 s tick, so the first scrape comes ~5 s after a
start or reload: the module shares one Prometheus and each test uses its own revisions.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controller.adapters.prometheus import PrometheusSource
from controller.errors import SpecError
from controller.plan import queries
from controller.plan.observations import QueryContext, Sample
from controller.spec.rollout import Check, Provider, Threshold
from tests.support.exporter import Exporter
from tests.support.prometheus import PrometheusServer
from tests.support.services import wait_until

pytestmark = pytest.mark.slow

WINDOW = 10.0
TOLERANCE = 0.03


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    with Exporter().running() as e:
        yield e


@pytest.fixture(scope="module")
def prometheus(exporter: Exporter) -> Iterator[PrometheusServer]:
    with PrometheusServer([exporter.target]) as p:
        p.wait_targets_up(timeout=20)
        yield p


@pytest.fixture
def source(prometheus: PrometheusServer) -> Iterator[PrometheusSource]:
    with PrometheusSource(prometheus.url) as s:
        yield s


@pytest.fixture
def revs(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(canary, stable) revision names of this test alone."""
    base = request.node.name.removeprefix("test_")[:40]
    return f"{base}-canary", f"{base}-stable"


def check(query: str, *, relative: bool = False) -> Check:
    threshold = Threshold(max=0.05, relative_to="stable" if relative else None)
    return Check(name="c", provider=Provider.PROMETHEUS, query=query, threshold=threshold, window=WINDOW)


def context(exporter: Exporter, canary: str, stable: str) -> QueryContext:
    return QueryContext(system=exporter.system, revision=canary, stable_revision=stable, window_s=WINDOW)


def measured(source: PrometheusSource, c: Check, ctx: QueryContext, *, timeout: float = 30) -> Sample:
    """The first sample with data for the canary (and stable, when relative)."""

    def probe() -> Sample | None:
        s = source.sample(c, ctx)
        assert s.error is None, s.error
        relative = c.threshold.relative_to is not None
        return s if s.value is not None and (s.stable is not None or not relative) else None

    return wait_until(probe, timeout=timeout, interval=0.25, what=f"data for {c.query}")


def test_error_rate_of_the_canary_relative_to_stable(
    exporter: Exporter, source: PrometheusSource, revs: tuple[str, str]
) -> None:
    canary, stable = revs
    exporter.control(stable, rps=40, error_ratio=0.0, latency=0.02)
    exporter.control(canary, rps=40, error_ratio=0.2, latency=0.2)
    ctx = context(exporter, canary, stable)

    first = measured(source, check("template:error-rate", relative=True), ctx)
    assert first.value == pytest.approx(0.2, abs=TOLERANCE)
    assert first.stable == 0.0  # no error series at all reads 0, not "no data"
    assert first.samples > 0

    wait_until(lambda: source.sample(check("template:request-count"), ctx).samples >= 200, timeout=30)
    later = source.sample(check("template:error-rate", relative=True), ctx)
    assert later.value == pytest.approx(0.2, abs=TOLERANCE)
    assert later.samples >= 200

    absolute = source.sample(check("template:error-rate"), ctx)
    assert absolute.stable is None  # stable is only measured for relative thresholds

    latency = source.sample(check("template:latency-p99", relative=True), ctx)
    assert latency.value is not None and latency.stable is not None
    assert 0.1 < latency.value <= 0.25  # the (0.1, 0.25] bucket
    assert 0.01 < latency.stable <= 0.025


def test_no_data_is_none_not_an_error(exporter: Exporter, source: PrometheusSource, revs: tuple[str, str]) -> None:
    canary, stable = revs  # never sent any traffic
    s = source.sample(check("template:error-rate", relative=True), context(exporter, canary, stable))
    assert s == Sample(value=None, stable=None, samples=0, error=None)
    for nan in ("0 / 0", "vector(0) / 0"):  # a scalar, a one-series vector
        assert source.sample(check(nan), context(exporter, canary, stable)) == Sample(value=None)


def test_several_series_is_an_error_naming_the_query(
    exporter: Exporter, prometheus: PrometheusServer, source: PrometheusSource, revs: tuple[str, str]
) -> None:
    canary, stable = revs
    exporter.control(canary, rps=20)
    exporter.control(stable, rps=20)
    both = f'count(sum by (revision) (modship_requests_total{{revision=~"{canary}|{stable}"}}))'
    prometheus.wait_for_value(both, until=lambda n: n == 2)

    query = 'sum by (revision) (rate(modship_requests_total{system="{{ system }}"}[{{ window }}]))'
    s = source.sample(check(query), context(exporter, canary, stable))
    assert s.value is None
    assert s.error is not None
    assert "series" in s.error and 'system="topic-classifier"' in s.error


@pytest.mark.parametrize(
    ("query", "needle"),
    [("sum(rate(up[1m]", "bad_data"), ("up[1m]", "returned a matrix")],
)
def test_prometheus_errors_are_sample_errors(
    exporter: Exporter, source: PrometheusSource, revs: tuple[str, str], query: str, needle: str
) -> None:
    s = source.sample(check(query), context(exporter, *revs))
    assert s.value is None
    assert s.error is not None and needle in s.error


def test_a_missing_variable_is_raised_as_a_spec_error(
    exporter: Exporter, source: PrometheusSource, revs: tuple[str, str]
) -> None:
    with pytest.raises(SpecError, match="team"):
        source.sample(check('sum(up{team="{{ team }}"})'), context(exporter, *revs))


@pytest.mark.parametrize("name", sorted(queries.TEMPLATES))
def test_every_template_is_valid_promql(
    exporter: Exporter, source: PrometheusSource, revs: tuple[str, str], name: str
) -> None:
    s = source.sample(check(f"template:{name}", relative=True), context(exporter, *revs))
    assert s.error is None


def test_escaped_values_reach_prometheus_unchanged(prometheus: PrometheusServer) -> None:
    value = 'a "quoted" \\ back\\slash\nnewline'
    query = queries.render('label_replace(vector(1), "v", "{{ v }}", "", "")', {"v": value})
    [series] = prometheus.api("query", query=query)["result"]
    assert series["metric"]["v"] == value


def test_prometheus_down_then_back(exporter: Exporter, revs: tuple[str, str]) -> None:
    canary, stable = revs
    exporter.control(canary, rps=40, error_ratio=0.2)
    ctx = context(exporter, canary, stable)
    c = check("template:error-rate")
    with PrometheusServer() as prometheus, PrometheusSource(prometheus.url) as source:
        assert source.online()
        prometheus.set_targets([exporter.target])  # reload, wait until the target is active
        assert measured(source, c, ctx).value == pytest.approx(0.2, abs=TOLERANCE)

        prometheus.stop()
        assert not source.online()
        down = source.sample(c, ctx)
        assert down.value is None
        assert down.error is not None and "unreachable" in down.error

        prometheus.start()
        assert source.online()
        assert measured(source, c, ctx).value == pytest.approx(0.2, abs=TOLERANCE)  # the data kept
        restarted = prometheus.wait_for_value("time()")
        last_scrape = f'timestamp(up{{instance="{exporter.target}"}})'
        prometheus.wait_for_value(last_scrape, until=lambda t: t > restarted)
        assert measured(source, c, ctx).value == pytest.approx(0.2, abs=TOLERANCE)
