"""End-to-end throughput of ihub on real Postgres, Redis and worker processes, next to ceilings.

    python bench/e2e.py --records N [--mode per-record|batched|both] [--workers 2]
                        [--concurrency 2] [--pool prefork] [--batch-size 500]

In one run, with the same Postgres, Redis and workers x concurrency:
(a) the no-op Celery ceiling (bench/noop_tasks.py), (a') its tasks each making one committed
write; (b) ihub per-record; (c) ihub batched; (d) a plain psycopg2 ``execute_values`` upsert
of the same rows, (d') pages read, staged and upserted in one process; (e) dlt's ``rest_api``
merge load when dlt is installed (skipped with a note otherwise); then a 1 % delta after the
last full load. Prints a table and, as its last line, one JSON object. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
import requests
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import ceilings, dlt_merge, upserts
from e2e_options import parse_args
from machine import CpuMeter
from parts import REPO, BenchError, Deadline, Workers, figures, rss_mb, safe_url, say, summary
from source_process import SourceProcess

from models.db import normalize_url

DEMO_CONFIG = REPO / "ihub" / "demo" / "demo.yaml"
MODES = {"per-record": "incidents", "batched": "incidents_batched"}
PROGRESS_EVERY = 2.0
POLL_EVERY = 0.02


class _FetchTimeout(BaseException):
    """Raised from the publish callback: fetch_delta treats any Exception from publish as a
    broker outage (rows left to the reconciler) and carries on, so this must not be one."""


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.deadline = Deadline(args.timeout)
        self.db_name = f"ihub_bench_{secrets.token_hex(4)}"
        self.admin_url = args.pg
        self.db_url = (
            make_url(args.pg).set(database=self.db_name).render_as_string(hide_password=False)
        )
        self.tmp = Path(tempfile.mkdtemp(prefix="ihub-bench-"))
        self.home = self.tmp / "home"
        self.home.mkdir()
        self.config = self.tmp / "integrations.yaml"
        self.redis = redis.Redis.from_url(args.redis, socket_timeout=10)
        self.redis_lock: tuple[redis.Redis, str, str] | None = None
        self.source: Any = None
        self.db_created = False
        self.workers: list[Workers] = []
        self.failed = False
        self.cpu = CpuMeter()  # the machine's CPU a record, per phase

    # -- setup ------------------------------------------------------------------------------

    def setup(self) -> dict[str, str]:
        from ihub.demo.options import DemoSourceOptions

        self._claim_redis_db()
        self._create_database()
        self.redis.flushdb()
        say(f"redis:      {safe_url(self.args.redis)} (flushed)")
        self.source = SourceProcess(DemoSourceOptions(page_size_max=1000)).start()
        self.source.seed(self.args.records)
        say(f"source:     {self.source.records_url} ({self.args.records} records)")
        self._write_config()
        env = {
            "IHUB_HOME": str(self.home),
            "IHUB_CONFIG": str(self.config),
            "IHUB_DATABASE_URL": self.db_url,
            "IHUB_BROKER_URL": self.args.redis,
            "IHUB_SECRET_KEY": secrets.token_urlsafe(32),
            "IHUB_DEMO_URL": self.source.url,
            "IHUB_DEMO_SECRET": self.source.options.client_secret,
        }
        os.environ.update(env)
        from models.migrate import upgrade

        upgrade(self.db_url)
        say(f"database:   {safe_url(self.db_url)} (migrated)")
        return {**os.environ, **env}

    def _claim_redis_db(self) -> None:
        """Take the lock the test suite's ``redis_url`` fixture takes (``ihub-test-lock:<db>``
        in db 0), so that the benchmark never flushes a database a test run is using."""
        db = int(self.redis.connection_pool.connection_kwargs.get("db", 0))
        if db == 0:
            raise BenchError("--redis must name a database other than 0 (it is FLUSHED)")
        lock_client = redis.Redis.from_url(urlsplit(self.args.redis)._replace(path="/0").geturl())
        key, token = f"ihub-test-lock:{db}", f"bench-{os.getpid()}-{secrets.token_hex(4)}"
        if not lock_client.set(key, token, nx=True, ex=int(self.args.timeout) + 300):
            holder = lock_client.get(key)
            raise BenchError(
                f"Redis db {db} is in use ({key} held by {holder!r}); pick another --redis db"
            )
        self.redis_lock = (lock_client, key, token)

    def _release_redis_db(self) -> None:
        if self.redis_lock is None:
            return
        client, key, token = self.redis_lock
        if client.get(key) == token.encode():
            client.delete(key)
        self.redis_lock = None

    def _create_database(self) -> None:
        engine = create_engine(normalize_url(self.admin_url), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{self.db_name}"'))
            self.db_created = True
        finally:
            engine.dispose()

    def _write_config(self) -> None:
        """ihub/demo/demo.yaml's integration twice, per-record and batched, each with its own
        watermark and sink table, with the page limit of this benchmark."""
        config = yaml.safe_load(DEMO_CONFIG.read_text())
        base = config["integrations"]["incidents"]
        base["source"]["pagination"]["limit"] = self.args.page_limit
        base["fetch"] = {"max_pages": 1_000_000}  # the benchmark times one whole run
        integrations = {}
        for mode, name in MODES.items():
            integration = copy.deepcopy(base)
            integration["mode"], integration["sink"]["table"] = mode, name
            if mode == "batched":
                integration["batch_size"] = self.args.batch_size
            integrations[name] = integration
        self.config.write_text(yaml.safe_dump({"integrations": integrations}, sort_keys=False))

    # -- ihub -------------------------------------------------------------------------------

    def run_mode(self, env: dict[str, str], mode: str, *, delta: bool) -> dict[str, Any]:
        """A full load of the source in ``mode`` (and a 1 % delta after it when ``delta``)."""
        from tasks.app import get_app

        a, name = self.args, MODES[mode]
        self.redis.flushdb()
        app = get_app()
        workers = Workers("tasks", "bench", a.workers, a.concurrency, env, self.tmp, a.pool)
        self.workers.append(workers)
        workers.start()
        took = workers.wait_ready(app, self.deadline)
        say(f"{mode}: {a.workers} worker(s) x {a.concurrency} ({a.pool}) ready in {took:.1f}s")
        rss_start = rss_mb(workers.pids)
        with self.cpu.phase(mode.replace("-", "_"), a.records):
            full = self._load(app, name, a.records)
        found: dict[str, Any] = {"full": full, "rss_start": rss_start}
        if delta:
            changed = max(1, a.records // 100)
            rng = random.Random(7)
            ids = rng.sample(sorted(self.source.snapshot()), changed)
            for record_id in ids:
                self.source.update(record_id, priority=rng.randint(1, 4))
            found["delta"] = self._load(app, name, changed)
            if a.versions > 1:
                found["delta_after_versions"] = self._delta_after_versions(app, name, ids)
        found["rss_end"] = rss_mb(workers.pids)
        workers.stop()
        return found

    def _delta_after_versions(self, app: Any, name: str, delta_ids: list[str]) -> dict[str, Any]:
        """Every record changed and loaded ``--versions`` - 1 more times (each now has that
        many staged versions), then the same 1 % delta again: history must not make it dearer.

        The versions are made in a few seconds, so the next fetch's lookback (the seconds before
        the watermark it reads again) would cover nearly all of them, where the first delta's
        covers a few seeded records. So the watermark is first moved past them, untimed: one
        record changed, once the lookback has gone by, and fetched."""
        from pipeline.hub import Hub

        everyone = sorted(self.source.snapshot())
        for version in range(2, self.args.versions + 1):
            say(f"version {version} of every record")
            self.source.update_many(everyone, priority=version % 4 + 1)
            self._load(app, name, len(everyone))
        time.sleep(Hub.from_env().integration(name).source.delta.lookback + 1)
        self.source.update(everyone[0], state="in_progress")
        self._load(app, name, 1)
        for record_id in delta_ids:
            self.source.update(record_id, state="closed")
        return self._load(app, name, len(delta_ids))

    def _load(self, app: Any, name: str, expected: int) -> dict[str, float]:
        """One fetch of ``name`` in this process, then wait until every staged row is done."""
        from models import queue
        from models.schema import OPEN
        from pipeline import sync
        from pipeline.hub import Hub
        from tasks.records import publisher

        hub = Hub.from_env()
        send = publisher(app, hub, name)
        before = self._finished(name)
        # a full collection owed by the load before (this process holds the source's ids and
        # the harness) landed inside a 1,000-record delta: 79 ms of its 0.3 s; collect untimed
        gc.collect()
        started = time.monotonic()

        def publish(row_ids: list[int]) -> None:
            send(row_ids)
            if time.monotonic() > self.deadline.end:
                raise _FetchTimeout

        try:
            result = sync.fetch_delta(hub, name, publish, owner="bench")
        except _FetchTimeout:
            raise BenchError(f"--timeout {self.args.timeout:.0f}s exceeded fetching") from None
        fetched = time.monotonic()
        if result.status != "ok" or result.run_id is None or result.unpublished:
            raise BenchError(f"fetch of {name}: {result}")
        if result.staged != expected:
            raise BenchError(f"fetch of {name} staged {result.staged}, expected {expected}")
        run_id = result.run_id

        def progress() -> tuple[bool, str]:
            finished = self._finished(name) - before
            line = f"  {name} {time.monotonic() - started:7.1f}s  finished={finished}/{expected}"
            if finished < expected:
                return False, line
            counts = queue.run_counts(self.db_url, run_id)
            return not any(counts[s] for s in OPEN), line

        done = self.wait(progress, f"waiting for every record of {name}")
        counts = queue.run_counts(self.db_url, run_id)
        if counts["done"] != expected:
            raise BenchError(f"{name}: not every record ended done: {counts}")
        rows = self._count_rows(name)
        if rows != self.args.records:
            raise BenchError(f"table {name} holds {rows} row(s), expected {self.args.records}")
        say(f"  {name}: {expected} done in {done - started:.1f}s (fetch {fetched - started:.1f}s)")
        return {"records": expected, "fetch_s": fetched - started, "e2e_s": done - started}

    def _finished(self, name: str) -> int:
        """Records of ``name`` done or dead so far, from the per-minute rollups: a few rows,
        where counting ``ihub_records`` of the run scans every row it holds, 50 times a second,
        on the cores the workers use."""
        from models import rollups
        from models.db import session_scope

        with session_scope(self.db_url) as session:
            found = rollups.totals(session, ["done", "dead"]).get(name, {})
        return int(found.get("done", 0)) + int(found.get("dead", 0))

    def _count_rows(self, table: str) -> int:
        from models.db import get_engine

        with get_engine(self.db_url).connect() as connection:
            return int(connection.execute(text(f'SELECT count(*) FROM "{table}"')).scalar())

    def wait(self, check: Callable[[], tuple[bool, str]], what: str) -> float:
        """Poll ``check`` (finished?, progress line) every POLL_EVERY s and print its line every
        PROGRESS_EVERY s; the monotonic time at which it first reported finished."""
        last_line = time.monotonic()
        while True:
            now = time.monotonic()
            finished, line = check()
            if finished:
                return now
            if now - last_line >= PROGRESS_EVERY:
                last_line = now
                say(line)
            self.deadline.check(what)
            time.sleep(POLL_EVERY)

    def source_token(self) -> str:
        """An access token of the demo source, for dlt (client credentials, as ihub does)."""
        response = requests.post(
            self.source.token_url,
            data={"grant_type": "client_credentials"},
            auth=("demo-client", self.source.options.client_secret),
            timeout=10,
        )
        response.raise_for_status()
        return str(response.json()["access_token"])

    # -- teardown ---------------------------------------------------------------------------

    def cleanup(self) -> None:
        for workers in self.workers:
            try:
                workers.stop()
            except Exception as exc:
                say(f"  could not stop {workers.prefix} workers: {exc}")
        if self.source is not None:
            self.source.stop()
        with contextlib.suppress(Exception):
            from models.db import dispose_all

            dispose_all()
        if self.db_created:
            try:
                self._drop_database()
                say(f"dropped database {self.db_name}")
            except Exception as exc:
                say(f"could not drop database {self.db_name}: {exc}")
        if self.redis_lock is not None:
            try:
                self.redis.flushdb()
                self._release_redis_db()
            except redis.RedisError as exc:
                say(f"could not flush {safe_url(self.args.redis)}: {exc}")
        if (self.failed and self.workers) or self.args.keep:
            say(f"worker logs and config kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _drop_database(self) -> None:
        engine = create_engine(normalize_url(self.admin_url), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                drop = f'DROP DATABASE IF EXISTS "{self.db_name}"'
                try:
                    connection.execute(text(drop + " WITH (FORCE)"))
                except Exception:  # before Postgres 13: no FORCE
                    connection.execute(text(drop))
        finally:
            engine.dispose()

    def run(self) -> dict[str, Any]:
        env = self.setup()
        a, n = self.args, self.args.records
        modes = list(MODES) if a.mode == "both" else [a.mode]
        layout = (a.ceiling_records or n, a.workers, a.concurrency, a.pool)
        above = ceilings(self, env, modes, layout)
        loads = {m: self.run_mode(env, m, delta=m == modes[-1]) for m in modes}
        plain = upserts(self, modes, a.page_limit)
        with self.cpu.phase("dlt", n):
            dlt = dlt_merge(self.source, self.db_url, self.source_token()) if a.dlt else None
        found = figures(n, above, loads, plain, dlt, modes[-1], self.cpu.us)
        return {**found, "ceiling_records": a.ceiling_records or n, "versions": a.versions}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    bench = Bench(args)
    result: dict[str, Any] | None = None
    code = 0
    try:
        result = bench.run()
    except KeyboardInterrupt:
        say("\ninterrupted; cleaning up")
        code = 130
    except BenchError as exc:
        say(f"FAILED: {exc}")
        for workers in bench.workers:
            for name in workers.names:
                say(f"{name}.log (tail):\n{workers.log_tail(name)}")
        bench.failed, code = True, 1
    except BaseException:
        bench.failed = True
        raise
    finally:
        for stop in (signal.SIGINT, signal.SIGTERM):  # a second one must not skip cleanup
            signal.signal(stop, signal.SIG_IGN)
        try:
            bench.cleanup()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if result is not None:
        say(summary(result, args))
        say(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main())
