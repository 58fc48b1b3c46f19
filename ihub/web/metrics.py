"""``/metrics`` in the Prometheus text format, computed from the database and broker per scrape.

Workers are many processes on many hosts, so in-process counters would each see a fraction:
instead one collector asks the system of record at scrape time. The record counters and the
processing-time histogram are sums of the per-minute rollups (``models.rollups``), written in
the transaction of each outcome, so a purge, a requeue or the retention of finished rows never
lowers them; what can fall (rows per status, active dead letters) is a gauge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from ihub import report
from models import dashboard
from models.schema import DURATION_BOUNDS_MS
from pipeline.timefmt import utcnow

PROCESSING_BUCKETS = tuple(b / 1000 for b in DURATION_BOUNDS_MS)  # kept per minute, in ms
FETCH_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
STATES = ("running", "paused", "failing")
Letters = tuple[str, str, int, int]


class IhubCollector(Collector):
    """Every ihub metric, read afresh on each ``collect()``."""

    def __init__(
        self,
        database_url: str,
        broker_url: str | None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database_url, self.broker_url, self.clock = database_url, broker_url, clock

    def collect(self) -> Iterator[Metric]:
        stats = dashboard.record_stats(self.database_url)
        letters = dashboard.dead_letter_totals(self.database_url)
        yield from self._records(stats)
        yield from _histogram(
            "ihub_record_processing_seconds",
            "Processing time of records that ended done (process_record, claim to done).",
            stats.durations,
            PROCESSING_BUCKETS,
            scale=0.001,
        )
        yield from self._dead_letters(letters)
        yield from self._fetches()
        yield from self._integrations()
        yield from self._tokens()
        yield from self._queues()
        yield _build_info()

    def _records(self, stats: dashboard.RecordStats) -> Iterator[Metric]:
        outcomes = CounterMetricFamily(
            "ihub_records",
            "Records processed, by outcome: done, or dead (each death, requeued ones included).",
            labels=["integration", "outcome"],
        )
        retries = CounterMetricFamily(
            "ihub_record_retries",
            "Retries scheduled (a record marked retrying), over every record ever processed.",
            labels=["integration"],
        )
        current = GaugeMetricFamily(
            "ihub_staged_records",
            "Staged records now in each status (a gauge: it falls as records finish).",
            labels=["integration", "status"],
        )
        for integration, status, rows in stats.rows:
            current.add_metric([integration, status], rows)
        for integration, totals in sorted(stats.totals.items()):
            outcomes.add_metric([integration, "done"], totals["done"])
            outcomes.add_metric([integration, "dead"], totals["dead"])
            retries.add_metric([integration], totals["retries"])
        yield from (outcomes, retries, current)

    def _dead_letters(self, letters: list[Letters]) -> Iterator[Metric]:
        active = GaugeMetricFamily(
            "ihub_dead_letters",
            "Dead letters waiting for an operator, by integration and error class.",
            labels=["integration", "error_class"],
        )
        for integration, error_class, n, _died in letters:
            active.add_metric([integration, error_class], n)
        yield active

    def _fetches(self) -> Iterator[Metric]:
        runs = CounterMetricFamily(
            "ihub_fetch_runs",
            "Delta fetches by final status (ok, failed, paused, lost_race, running).",
            labels=["integration", "status"],
        )
        for integration, status, n in dashboard.fetch_run_totals(self.database_url):
            runs.add_metric([integration, status], n)
        yield runs
        yield from _histogram(
            "ihub_fetch_duration_seconds",
            "Wall time of finished delta fetches.",
            dashboard.fetch_buckets(self.database_url, FETCH_BUCKETS),
            FETCH_BUCKETS,
        )

    def _integrations(self) -> Iterator[Metric]:
        now = self.clock()
        lag = GaugeMetricFamily(
            "ihub_watermark_lag_seconds",
            "Now minus the watermark's updated instant.",
            labels=["integration"],
        )
        success = GaugeMetricFamily(
            "ihub_last_success_timestamp_seconds",
            "When the last fetch that succeeded ended (Unix time).",
            labels=["integration"],
        )
        state = GaugeMetricFamily(
            "ihub_integration_state",
            "1 for the integration's current state (running, paused, failing), else 0.",
            labels=["integration", "state"],
        )
        for item in report.integrations_overview(self.database_url, now):
            name = item["name"]
            if item["watermark_lag_seconds"] is not None:
                lag.add_metric([name], item["watermark_lag_seconds"])
            if item["last_success_at"]:
                success.add_metric([name], _epoch(item["last_success_at"]))
            for candidate in STATES:
                state.add_metric([name, candidate], 1.0 if item["state"] == candidate else 0.0)
        yield from (lag, success, state)

    def _tokens(self) -> Iterator[Metric]:
        labels = ["integration", "credential"]
        refreshes = CounterMetricFamily(
            "ihub_token_refreshes", "OAuth 2.0 token refreshes that succeeded.", labels=labels
        )
        failures = CounterMetricFamily(
            "ihub_token_refresh_failures", "OAuth 2.0 token refreshes refused.", labels=labels
        )
        expiry = GaugeMetricFamily(
            "ihub_token_expiry_timestamp_seconds",
            "When the current access token expires (Unix time).",
            labels=labels,
        )
        for token in dashboard.tokens(self.database_url):
            key = [token["integration"], token["credential"]]
            refreshes.add_metric(key, token["refresh_count"])
            failures.add_metric(key, token["failure_count"])
            if token["expires_at"]:
                expiry.add_metric(key, token["expires_at"])
        yield from (refreshes, failures, expiry)

    def _queues(self) -> Iterator[Metric]:
        depths = report.queue_depths(self.broker_url)
        up = GaugeMetricFamily("ihub_broker_up", "1 when the broker answered this scrape.")
        up.add_metric([], 0.0 if depths is None else 1.0)
        depth = GaugeMetricFamily(
            "ihub_queue_depth", "Messages waiting in each Celery queue.", labels=["queue"]
        )
        for name, n in (depths or {}).items():
            depth.add_metric([name], n)
        yield from (up, depth)


def _build_info() -> Metric:
    """``ihub_build_info{version}`` = 1: which release each scrape target runs."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("ihub")
    except PackageNotFoundError:
        release = "unknown"
    info = GaugeMetricFamily("ihub_build_info", "The running ihub release.", labels=["version"])
    info.add_metric([release], 1.0)
    return info


def _histogram(
    name: str,
    documentation: str,
    found: dict[str, tuple[list[int], int, float]],
    bounds: tuple[float, ...],
    *,
    scale: float = 1.0,
) -> Iterator[Metric]:
    family = HistogramMetricFamily(name, documentation, labels=["integration"])
    for integration, (cumulative, count, total) in sorted(found.items()):
        buckets = [(_le(b), float(c)) for b, c in zip(bounds, cumulative, strict=True)]
        family.add_metric([integration], [*buckets, ("+Inf", float(count))], total * scale)
    yield family


def _le(bound: float) -> str:
    return repr(float(bound))


def _epoch(iso_z: str) -> float:
    return datetime.fromisoformat(iso_z.removesuffix("Z")).replace(tzinfo=UTC).timestamp()


def render(
    database_url: str, broker_url: str | None, clock: Callable[[], datetime] = utcnow
) -> bytes:
    """The exposition text of one scrape (a fresh registry: nothing is kept between scrapes)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(IhubCollector(database_url, broker_url, clock))
    return generate_latest(registry)
