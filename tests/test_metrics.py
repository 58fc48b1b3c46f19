"""/metrics scraped over HTTP and parsed with prometheus_client's own parser, on known rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from ihub.web.server import ServerHandle, serve
from models import migrate, queue
from models.db import session_scope
from models.schema import StagedRecord
from tests import web_seed
from tests.web_seed import NOW

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, int]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/metrics.db"
        migrate.upgrade(url)
    else:
        url = request.getfixturevalue("pg_url")
    return url, web_seed.seed(url)


@pytest.fixture
def server(db: tuple[str, dict[str, int]]) -> Iterator[ServerHandle]:
    handle = serve(db[0], None, port=0, clock=lambda: NOW)
    yield handle
    handle.stop()


def scrape(server: ServerHandle) -> tuple[dict[str, str], Samples]:
    """(type of each family, every sample by name and labels)."""
    response = requests.get(server.url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_parse_with_the_exact_figures(server: ServerHandle) -> None:
    """Every family parses, has the conventional type, and carries the figures of the rows."""
    types, s = scrape(server)
    assert types["ihub_records"] == "counter" and types["ihub_token_refreshes"] == "counter"
    assert types["ihub_record_processing_seconds"] == "histogram"
    assert types["ihub_fetch_duration_seconds"] == "histogram"
    assert types["ihub_queue_depth"] == "gauge" and types["ihub_watermark_lag_seconds"] == "gauge"
    records = "ihub_records_total"
    assert value(s, records, integration="crm", outcome="done") == 25
    assert value(s, records, integration="crm", outcome="dead") == 4  # 3 dead + 1 requeued death
    assert value(s, records, integration="erp", outcome="done") == 1
    assert value(s, records, integration="erp", outcome="dead") == 1
    assert value(s, "ihub_record_retries_total", integration="crm") == 20  # 3x2 + 3x4 + 2x1
    assert value(s, "ihub_staged_records", integration="crm", status="pending") == 4
    bucket = "ihub_record_processing_seconds_bucket"
    # crm done: 10, 20, ..., 200 ms and 5 x 1000 ms
    assert value(s, bucket, integration="crm", le="0.01") == 1
    assert value(s, bucket, integration="crm", le="0.1") == 10
    assert value(s, bucket, integration="crm", le="0.5") == 20
    assert value(s, bucket, integration="crm", le="1.0") == 25
    assert value(s, bucket, integration="crm", le="+Inf") == 25
    assert value(s, "ihub_record_processing_seconds_count", integration="crm") == 25
    assert value(s, "ihub_record_processing_seconds_sum", integration="crm") == pytest.approx(7.1)
    assert value(s, bucket, integration="erp", le="0.005") == 1
    assert value(s, "ihub_dead_letters", integration="crm", error_class="PermanentError") == 2
    assert value(s, "ihub_dead_letters", integration="crm", error_class="ValueError") == 1
    fetch = "ihub_fetch_duration_seconds"
    assert value(s, f"{fetch}_bucket", integration="crm", le="0.5") == 1  # 0.3 s
    assert value(s, f"{fetch}_bucket", integration="crm", le="2.5") == 2  # and 2 s
    assert value(s, f"{fetch}_sum", integration="crm") == pytest.approx(2.3)
    assert value(s, "ihub_fetch_runs_total", integration="crm", status="ok") == 1
    assert value(s, "ihub_watermark_lag_seconds", integration="crm") == 300
    assert value(s, "ihub_integration_state", integration="erp", state="paused") == 1
    assert value(s, "ihub_integration_state", integration="hr", state="failing") == 1
    token = {"integration": "crm", "credential": "crm:source"}
    assert value(s, "ihub_token_refreshes_total", **token) == 7
    assert value(s, "ihub_token_refresh_failures_total", **token) == 1
    expiry = web_seed.at(12, 30).replace(tzinfo=UTC).timestamp()
    assert value(s, "ihub_token_expiry_timestamp_seconds", **token) == expiry
    assert value(s, "ihub_broker_up") == 0


def test_metrics_are_read_from_the_database_at_scrape_time(
    server: ServerHandle, db: tuple[str, dict[str, int]]
) -> None:
    """A row finished by any process shows in the next scrape: nothing is counted in memory."""
    _, before = scrape(server)
    with session_scope(db[0]) as session:
        row_id = session.scalar(select(StagedRecord.id).where(StagedRecord.record_id == "p0"))
    queue.mark_done(db[0], int(row_id), 3000.0)
    _, after = scrape(server)
    done = {"integration": "crm", "outcome": "done"}
    assert (
        value(after, "ihub_records_total", **done)
        == value(before, "ihub_records_total", **done) + 1
    )
    assert value(after, "ihub_record_processing_seconds_bucket", integration="crm", le="2.5") == 25
    assert value(after, "ihub_record_processing_seconds_bucket", integration="crm", le="5.0") == 26


def test_queue_depth_comes_from_the_broker(tmp_path: Path, redis_url: str) -> None:
    """ihub_queue_depth is the length of each Celery queue on the broker, and broker_up is 1."""
    url = f"sqlite:///{tmp_path}/q.db"
    migrate.upgrade(url)
    client = redis.Redis.from_url(redis_url)
    client.rpush("ihub.process", "a", "b")
    handle = serve(url, redis_url, port=0)
    try:
        _, s = scrape(handle)
    finally:
        handle.stop()
        client.close()
    assert value(s, "ihub_queue_depth", queue="ihub.process") == 2
    assert value(s, "ihub_queue_depth", queue="ihub.fetch") == 0
    assert value(s, "ihub_broker_up") == 1
