"""Delta end to end on Redis + Postgres with real worker processes and the real demo source:
a source that changes (and deletes) continuously while syncs run, and a fetch task killed with
SIGKILL in the middle of its paging."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from ihub.demo.source import DemoSource, DemoSourceOptions
from models import integrations, runs
from models.db import get_engine, session_scope
from models.schema import FetchRun, StagedRecord
from pipeline.timefmt import format_time
from tests.chaostools import build_stack, cluster, fetch, settled, wait_until

pytestmark = [pytest.mark.services, pytest.mark.slow]

KEYSET = {"type": "keyset", "id_param": "after_id", "limit": 25}
TOMBSTONES = {"endpoint": {"url": "{url}/api/deleted", "records": "data"}, "action": "delete"}


@pytest.fixture
def source() -> Iterator[DemoSource]:
    demo = DemoSource(DemoSourceOptions(token_lifetime=300, page_size_max=1000)).start()
    yield demo
    demo.stop()


def live_target(url: str) -> dict[str, int]:
    with get_engine(url).connect() as connection:
        return {
            r[0]: int(r[1]) for r in connection.execute(text("SELECT id, version FROM incidents"))
        }


def staged_pairs(url: str) -> list[tuple[str, str, str]]:
    with session_scope(url) as session:
        query = select(StagedRecord.record_id, StagedRecord.version, StagedRecord.digest)
        return [tuple(row) for row in session.execute(query)]


def test_source_changing_during_syncs_ends_equal_after_one_more_delta(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str, redis_url: str, source
) -> None:
    """A source changing faster than a fetch reads: every run ends within its budget while the
    status stays running; after the changes stop, one more delta (its continuation runs
    included) makes the target equal to the source."""
    source.seed(400, start=datetime.now(UTC) - timedelta(seconds=40))
    deletes = {
        **TOMBSTONES,
        "endpoint": {**TOMBSTONES["endpoint"], "url": source.url + "/api/deleted"},
    }
    env, hub, app = build_stack(
        tmp_path,
        monkeypatch,
        source,
        pg_url,
        redis_url,
        None,
        source__pagination=KEYSET,
        source__delta={"param": "updated_since", "lookback": 2},
        source__deletes=deletes,
        fetch=BUDGET,
    )
    stop, rng = threading.Event(), random.Random(7)

    def mutate() -> None:
        while not stop.is_set():
            source.mutate_random(3, rng, deletes=0.1)
            time.sleep(0.01)

    with cluster(env, tmp_path) as workers:
        workers.start_worker("a", 2)
        workers.start_worker("b", 2)
        workers.wait_ready()
        mutator = threading.Thread(target=mutate, daemon=True)
        mutator.start()
        results, states, until = [], set(), time.monotonic() + 8
        try:
            while len(results) < 3 or time.monotonic() < until:  # each fetch ends: bounded
                results.append(fetch(hub, app))
                states.add(integration_state(hub.database_url))
        finally:
            stop.set()
            mutator.join(timeout=10)
        final = catch_up(hub, app)
        wait_until(lambda: settled(hub.database_url), timeout=120, what="every record written")
    expected = {rid: int(r["version"]) for rid, r in source.snapshot().items()}
    pages = [r.pages for r in results]
    print(
        f"\nHOT runs={len(results)} pages={pages} more={sum(r.more for r in results)} "
        f"final={[(r.pages, r.more) for r in final]} records={len(expected)}"
    )
    assert {r.status for r in results} == {"ok"} and states == {"running"}
    assert max(pages) <= BUDGET["max_pages"] + 1  # the tombstones get one page at least
    assert len(source.deleted_ids()) > 10
    assert live_target(hub.database_url) == expected
    staged = staged_pairs(hub.database_url)
    assert len(staged) == len(set(staged)), "a version was staged twice"


BUDGET = {"max_pages": 30, "max_seconds": 5, "page_backoff": 0.05}


def catch_up(hub: Any, app: Any, runs_at_most: int = 50) -> list[Any]:
    """One more delta after the changes stopped, with its continuation runs."""
    done = []
    for _ in range(runs_at_most):
        done.append(fetch(hub, app))
        assert done[-1].status == "ok", done[-1]
        if not done[-1].more:
            return done
    raise AssertionError(f"still more to read after {runs_at_most} runs of a still source")


def integration_state(url: str) -> str:
    from ihub.report import integrations_overview

    [item] = integrations_overview(url, datetime.now(UTC).replace(tzinfo=None))
    return str(item["state"])


def test_fetch_killed_mid_paging_resumes_from_its_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str, redis_url: str
) -> None:
    """A fetch SIGKILLed mid-paging resumes from its checkpoint: no restart, no skip."""
    demo = DemoSource(DemoSourceOptions(page_delay=0.25, page_size_max=1000)).start()
    try:
        demo.seed(60, start=datetime.now(UTC) - timedelta(hours=2))
        env, hub, app = build_stack(
            tmp_path,
            monkeypatch,
            demo,
            pg_url,
            redis_url,
            # rows whose publish died with the fetch are republished once 6 s overdue
            {"IHUB_RECONCILE_AFTER": "6"},
            source__pagination={**KEYSET, "limit": 5},
            source__delta={"param": "updated_since", "lookback": 0},
        )
        url = hub.database_url
        with cluster(env, tmp_path) as workers:
            workers.start_worker("w", 1)
            workers.wait_ready()
            app.tasks["ihub.fetch_delta"].apply_async(("incidents",))
            wait_until(
                lambda: (runs.latest(url, "incidents") or {}).get("pages", 0) >= 3,
                timeout=60,
                interval=0.05,
                what="three pages checkpointed",
            )
            [child] = workers.pool_children("w")
            os.kill(child, signal.SIGKILL)
            killed_at = time.monotonic()
            checkpoint = integrations.watermark(url, "incidents")
            wait_until(lambda: _finished_runs(url) >= 1, timeout=90, what="the redelivered fetch")
            # the kill may land between a page's commit and its publish: reconcile as beat would
            wait_until(
                lambda: _reconciled(hub, app) and settled(url),
                timeout=90,
                what="every record written",
            )
        after = [params for at, _m, path, params in demo.requests if at > killed_at]
    finally:
        demo.stop()
    assert checkpoint is not None
    resumed_from = format_time(checkpoint.updated, "iso")
    assert after and after[0].get("updated_since") == resumed_from, after[:2]
    assert len(after) < 60 // 5, "the redelivered fetch read every page again"
    assert live_target(url) == {rid: int(r["version"]) for rid, r in demo.snapshot().items()}
    staged = staged_pairs(url)
    assert len(staged) == 60 and len({pair[0] for pair in staged}) == 60


def _finished_runs(url: str) -> int:
    with session_scope(url) as session:
        query = select(FetchRun.id).where(FetchRun.status == "ok")
        return len(list(session.scalars(query)))


def _reconciled(hub: Any, app: Any) -> bool:
    from pipeline import sync
    from tasks.records import publish_records

    sync.reconcile(hub, lambda ids: publish_records(app, ids))
    return True
