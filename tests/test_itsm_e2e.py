"""Into a ServiceNow-style target end to end, with real workers: lost answers, throttling,
rejections, an outage and a changing source; every valid record exactly once at its latest
version, the rejected ones dead with the target's words, and home after a requeue."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ihub.demo.servicenow import ServiceNowOptions, ServiceNowTarget
from ihub.demo.source import DemoSource, DemoSourceOptions
from ihub.report import queue_depths
from models import deadletters, idmap, queue
from pipeline import sync
from tests.chaostools import (
    build_stack,
    cluster,
    fetch,
    report,
    settled,
    task_retries,
    wait_until,
)

pytestmark = [pytest.mark.services, pytest.mark.slow]

RECORDS = int(os.environ.get("IHUB_ITSM_RECORDS", "2000"))
REJECTED_SHARE = 0.01
OUTAGE_SECONDS = 20.0
MESSAGE = "Mandatory field missing: short_description"


def servicenow_sink(target: ServiceNowTarget) -> dict[str, Any]:
    return {
        "type": "rest",
        "url": target.table_url("incident"),
        "key": "id",
        "version_field": None,
        "timeout": 10,
        "rate_limit": 40,
        "rate_burst": 5,
        "lookup": {
            "field": "correlation_id",
            "syntax": "servicenow",
            "params": {
                "sysparm_query": "correlation_id={key}",
                "sysparm_fields": "sys_id,correlation_id",
                "sysparm_limit": "2",
            },
            "records": "result",
            "id": "sys_id",
        },
        "auth": {
            "type": "oauth2",
            "grant_type": "client_credentials",
            "token_url": target.token_url,
            "client_id": "servicenow-client",
            "client_secret": "sn-secret",
        },
    }


@pytest.fixture
def source() -> DemoSource:
    demo = DemoSource(DemoSourceOptions(page_size_max=1000)).start()
    yield demo
    demo.stop()


@pytest.fixture
def target() -> ServiceNowTarget:
    options = ServiceNowOptions(
        lose_after_commit=0.05,
        throttle_every=25,
        max_rps=30,
        mandatory=("short_description",),
        seed=12,
    )
    demo = ServiceNowTarget(
        options,
        DemoSourceOptions(
            client_id="servicenow-client", client_secret="sn-secret", token_lifetime=30
        ),
    ).start()
    yield demo
    demo.stop()


def test_servicenow_target_gets_every_valid_record_once_despite_lost_answers_and_outage(
    tmp_path: Path, monkeypatch, pg_url: str, redis_url: str, source, target
) -> None:
    """RECORDS records into a target losing 5 % of answers after commit, throttling with 429,
    rejecting 1 % for a mandatory field and down for 20 s, while the source changes: each valid
    record once by correlation id at its latest version, the rejected dead with the target's
    message, and all home after the rule is relaxed and they are requeued."""
    source.seed(RECORDS)
    rng = random.Random(7)
    rejected = set(rng.sample(sorted(source.snapshot()), int(RECORDS * REJECTED_SHARE)))
    for record_id in rejected:
        source.update(record_id, short_description="")
    retry = {"max_retries": 30, "backoff": 0.5, "backoff_max": 4.0, "jitter": True}
    env, hub, app = build_stack(
        tmp_path, monkeypatch, source, pg_url, redis_url, sink=servicenow_sink(target), retry=retry
    )
    url = hub.database_url
    logs = tmp_path / "logs"
    logs.mkdir()
    started = time.monotonic()
    with cluster(env, logs) as running:
        # no ping wait: the tasks wait in Redis until the workers start (bounded below)
        running.start_worker("w1", 3)
        running.start_worker("w2", 3)
        fetch(hub, app)
        stop = threading.Event()
        mutator = threading.Thread(target=_mutate, args=(source, rejected, stop), daemon=True)
        mutator.start()
        wait_until(
            lambda: queue.counts(url)["done"] >= RECORDS // 3,
            timeout=600,
            what="a third of the records done before the outage",
            interval=1,
        )
        target.set(down=True)
        _keep_syncing(hub, app, OUTAGE_SECONDS)
        target.set(down=False)
        _keep_syncing(hub, app, 10)
        stop.set()
        mutator.join(timeout=10)
        fetch(hub, app)
        _wait_settled(hub, app, "every record done or dead after the run")
        figures = _figures(source, target, url, rejected, logs, started)
        dead = _dead_letters(url)
        assert set(dead) == rejected, "exactly the rejected records are dead letters"
        assert all(MESSAGE in message for message in dead.values())
        _assert_each_once(source, target, skip=rejected)

        target.set(mandatory=())
        from ihub.cli import main

        result = CliRunner().invoke(main, ["dead", "requeue", "--integration", "incidents"])
        assert result.exit_code == 0, result.output
        _wait_settled(hub, app, "the requeued records done")
    _assert_each_once(source, target, skip=set())
    assert queue.counts(url)["dead"] == 0
    figures["after_requeue_records"] = len(target.by_field("incident"))
    figures["id_map_entries"] = idmap.count(url, "incidents")
    report("itsm", figures)
    assert figures["lost_responses"] > 0 and figures["throttled"] > 0 and figures["down_503"] > 0
    assert figures["id_map_entries"] == figures["after_requeue_records"] == len(source.snapshot())


def _mutate(source: DemoSource, rejected: set[str], stop: threading.Event) -> None:
    """Updates (and some inserts) to the valid records while the sync runs."""
    rng = random.Random(3)
    while not stop.wait(1.0):
        ids = [i for i in source.snapshot() if i not in rejected]
        for record_id in rng.sample(ids, 3):
            source.update(record_id, priority=rng.randint(1, 4), state=rng.choice(["new", "open"]))
        source.insert({"short_description": f"new {rng.random():.6f}"})


def _keep_syncing(hub: Any, app: Any, seconds: float) -> None:
    """Fetch and reconcile every 2 s for ``seconds``, as beat would."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        fetch(hub, app)
        _reconcile(hub, app)
        time.sleep(2)


def _reconcile(hub: Any, app: Any) -> None:
    """As beat would: rows waiting in the queue are not republished, lost ones are."""
    from tasks.records import publish_records

    depths = queue_depths(hub.settings.broker_url) or {}
    publish = lambda ids: publish_records(app, ids)  # noqa: E731
    sync.reconcile(hub, publish, queue_depth=depths.get("ihub.process"))


def _wait_settled(hub: Any, app: Any, what: str) -> None:
    def done() -> bool:
        if settled(hub.database_url):
            return True
        _reconcile(hub, app)
        return False

    wait_until(done, timeout=900, interval=2, what=what)


def _dead_letters(url: str) -> dict[str, str]:
    rows = deadletters.list_letters(url, deadletters.Selection(everything=True), limit=10_000)
    return {r["record_id"]: r["message"] for r in rows}


def _assert_each_once(source: DemoSource, target: ServiceNowTarget, *, skip: set[str]) -> None:
    """Every valid source record exactly once by correlation id, at its latest version."""
    grouped = target.by_field("incident")
    duplicates = {k: len(v) for k, v in grouped.items() if len(v) > 1}
    assert duplicates == {}
    want = {k: (v["version"], v["updated_at"]) for k, v in source.snapshot().items()}
    got = {k: (v[0]["version"], v[0]["updated_at"]) for k, v in grouped.items()}
    assert {k: v for k, v in want.items() if k not in skip} == {
        k: v for k, v in got.items() if k not in skip
    }
    assert not set(got) - set(want), "no record the source does not have"


def _figures(
    source: DemoSource,
    target: ServiceNowTarget,
    url: str,
    rejected: set[str],
    logs: Path,
    started: float,
) -> dict[str, Any]:
    counters = target.counters
    keys = (
        "creates",
        "updates",
        "searches",
        "lost_responses",
        "throttled",
        "down_503",
        "rejected",
        "idempotent_replays",
        "api_requests",
        "token_requests",
    )
    return {
        "source_records": len(source.snapshot()),
        "rejected_records": len(rejected),
        "target_records": len(target.by_field("incident")),
        "dead_rows": queue.counts(url)["dead"],
        "task_retries": task_retries(logs),
        **{k: counters[k] for k in keys},
        "seconds": round(time.monotonic() - started, 1),
    }
