"""The fetch side survives its worst day, with real workers, beat, Redis and Postgres: the
worker running a fetch is SIGKILLed mid-paging and the broker's Redis db is flushed while the
source keeps changing. Nobody intervenes; the figures are printed (``FETCHCRASH {...}``)."""

from __future__ import annotations

import json
import random
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from ihub.demo.source import DemoSource, DemoSourceOptions
from models import leases, queue, runs
from pipeline.lease import lease_name
from tasks.maintenance import broker_lost
from tests.chaostools import (
    build_stack,
    chaos_env,
    cluster,
    prepare_target,
    settled,
    source_rows,
    target_rows,
    wait_until,
)

pytestmark = [pytest.mark.services, pytest.mark.slow]

TTL = 6.0
RECONCILE_AFTER = 300  # far beyond the test: only the broker-loss marker brings pending rows back
KEYSET = {"type": "keyset", "id_param": "after_id", "limit": 20}


def test_fetch_worker_killed_and_broker_flushed_mid_paging_recovers_with_no_human_action(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str, redis_url: str
) -> None:
    """SIGKILL the worker running the fetch mid-paging, flush the broker db, keep the source
    changing: the next fetch starts within 2 x TTL, the lost rows come back through the
    broker-loss marker, and the target ends equal to the source with nothing dead."""
    source = DemoSource(DemoSourceOptions(page_delay=0.25, page_size_max=1000)).start()
    stop = threading.Event()
    try:
        source.seed(400, start=datetime.now(UTC) - timedelta(hours=1))
        prepare_target(pg_url)
        env, hub, app = build_stack(
            tmp_path,
            monkeypatch,
            source,
            pg_url,
            redis_url,
            chaos_env(IHUB_FETCH_LEASE_TTL=TTL, IHUB_RECONCILE_AFTER=RECONCILE_AFTER),
            schedule=2,
            source__pagination=KEYSET,
            source__delta={"param": "updated_since", "lookback": 2},
            fetch={"page_backoff": 0.05},
        )
        url, rng = hub.database_url, random.Random(9)
        assert not broker_lost(app, url)  # a reconcile ran before: the marker is set

        def mutate() -> None:
            while not stop.is_set():
                source.mutate_random(1, rng)
                time.sleep(0.1)

        threading.Thread(target=mutate, daemon=True).start()
        with cluster(env, tmp_path) as running:
            for name in ("a", "b"):
                running.start_worker(name, 2)
            running.wait_ready()
            running.start_beat()
            holder = wait_until(
                lambda: _mid_paging(url), timeout=120, interval=0.05, what="a fetch mid-paging"
            )
            killed_run = runs.latest(url, "incidents")
            victim = holder.holder.split("-", 1)[0]
            running.kill_worker(victim)
            killed_at = time.monotonic()
            redis.Redis.from_url(redis_url).flushdb()  # this test's own db only
            running.start_worker("c", 2)
            wait_until(
                lambda: _run_after(url, killed_run["id"]),
                timeout=2 * TTL,
                interval=0.1,
                what=f"the next fetch to start within 2 x TTL ({2 * TTL:.0f}s)",
            )
            restarted = round(time.monotonic() - killed_at, 1)
            time.sleep(3)  # the source keeps changing under the new fetches
            stop.set()
            stopped_at = datetime.now(UTC).replace(tzinfo=None)
            wait_until(
                lambda: _converged(url, source, stopped_at),
                timeout=RECONCILE_AFTER - 60,
                interval=1,
                what="target equal to source after the changes stopped",
            )
            converged = round(time.monotonic() - killed_at, 1)
            # the workers may have drained the queue before the flush, so the target can
            # converge before beat's next reconcile (every 30 s here) notices the loss
            wait_until(
                lambda: _loss_noticed(tmp_path) >= 1,
                timeout=90,
                interval=1,
                what="the reconciler to notice the broker loss",
            )
        lost_logged = _loss_noticed(tmp_path)
        figures = {
            "records": len(source_rows(source)),
            "killed_worker": victim,
            "killed_run_pages": killed_run["pages"],
            "next_fetch_started_s": restarted,
            "converged_s": converged,
            "runs": runs.latest(url, "incidents")["id"],
            "dead": queue.counts(url)["dead"],
            "broker_loss_noticed": lost_logged,
        }
        print("\nFETCHCRASH " + json.dumps(figures))
        assert figures["dead"] == 0 and lost_logged >= 1
        assert runs.get(url, killed_run["id"])["status"] == "abandoned"
        assert target_rows(pg_url) == source_rows(source)
    finally:
        stop.set()
        source.stop()


def _loss_noticed(log_dir: Path) -> int:
    """How many times the workers logged the broker-loss marker gone."""
    return sum(p.read_text().count("the broker lost its state") for p in log_dir.glob("*.log"))


def _mid_paging(url: str) -> leases.Holder | None:
    holder = leases.current(url, lease_name("incidents"))
    run = runs.latest(url, "incidents")
    busy = run is not None and run["status"] == "running" and run["pages"] >= 3
    return holder if holder is not None and holder.holder and busy else None


def _run_after(url: str, run_id: int) -> bool:
    latest = runs.latest(url, "incidents")
    return latest is not None and latest["id"] > run_id


def _converged(url: str, source: DemoSource, since: datetime) -> bool:
    latest = runs.latest(url, "incidents")
    if latest is None or latest["status"] != "ok":
        return False
    if datetime.fromisoformat(latest["started_at"].rstrip("Z")) < since or not settled(url):
        return False
    return target_rows(url) == source_rows(source)
