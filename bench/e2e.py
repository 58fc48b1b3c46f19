"""End-to-end throughput of ihub on real Postgres, Redis and worker processes, next to a ceiling.

    python bench/e2e.py [--records 10000] [--workers 2] [--concurrency 2]
                        [--pg postgresql://postgres@127.0.0.1:5432/test]
                        [--redis redis://127.0.0.1:6379/14] [--timeout 900] [--json]

1. a fresh database ``ihub_bench_<random>`` (migrated), the chosen Redis db flushed, and the
   demo source (OAuth 2.0, cursor paging) seeded with --records records;
2. ihub: --workers ``celery -A tasks worker`` processes; one delta fetch in this process
   (stage every page, publish one ``process_record`` per row), then wait until every record
   is done; the target table ``incidents`` must hold exactly --records rows;
3. the ceiling: as many no-op tasks (bench/noop_tasks.py, same Celery settings, same broker,
   same workers x concurrency) published and consumed;
4. workers stopped, the database dropped, a summary printed.

Run on demand only; it is not part of the test suite. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from models.db import normalize_url

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DEMO_CONFIG = REPO / "ihub" / "demo" / "demo.yaml"
INTEGRATION = "incidents"
PROGRESS_EVERY = 2.0
POLL_EVERY = 0.1


class BenchError(Exception):
    """The benchmark could not produce a trustworthy figure."""


class _FetchTimeout(BaseException):
    """Raised from the publish callback: fetch_delta treats any Exception from publish as a
    broker outage (rows left to the reconciler) and carries on, so this must not be one."""


@dataclass
class Result:
    records: int
    workers: int
    concurrency: int
    pages: int
    fetch_seconds: float
    processing_seconds: float
    e2e_seconds: float
    tail_seconds: float
    fetch_rps: float
    processing_rps: float
    e2e_rps: float
    drain_rps: float | None
    noop_publish_seconds: float
    noop_seconds: float
    noop_tps: float
    ratio: float
    e2e_ratio: float


def _say(message: str) -> None:
    print(message, flush=True)


def _rate(count: int, seconds: float) -> float:
    return count / max(seconds, 1e-6)


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def check(self, what: str) -> None:
        if time.monotonic() > self.end:
            raise BenchError(f"--timeout {self.seconds:.0f}s exceeded while {what}")


class Workers:
    """``count`` Celery worker processes, each in its own process group (so it stops whole)."""

    def __init__(
        self,
        app_name: str,
        prefix: str,
        count: int,
        concurrency: int,
        env: dict[str, str],
        log_dir: Path,
    ) -> None:
        self.app_name, self.prefix = app_name, prefix
        self.count, self.concurrency = count, concurrency
        self.env, self.log_dir = env, log_dir
        self.names = [f"{prefix}{n}" for n in range(1, count + 1)]
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for name in self.names:
            command = [
                sys.executable, "-m", "celery", "-A", self.app_name, "worker",
                "--concurrency", str(self.concurrency), "--loglevel", "WARNING",
                "--hostname", f"{name}@%h",
            ]  # fmt: skip
            with open(self.log_dir / f"{name}.log", "wb") as log:
                self.processes.append(
                    subprocess.Popen(
                        command,
                        env=self.env,
                        cwd=REPO,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )

    def wait_ready(self, app: Any, deadline: Deadline, limit: float = 90.0) -> float:
        """Until every worker answers a control ping; the seconds that took."""
        started = time.monotonic()
        expected = set(self.names)
        while True:
            self._check_alive()
            replies = app.control.ping(timeout=1.0) or []
            answered = {host.split("@")[0] for reply in replies for host in reply}
            if expected <= answered:
                return time.monotonic() - started
            deadline.check(f"waiting for {self.prefix} workers to answer ping")
            if time.monotonic() - started > limit:
                missing = ", ".join(sorted(expected - answered))
                raise BenchError(f"workers did not answer ping in {limit:.0f}s: {missing}")

    def _check_alive(self) -> None:
        for name, process in zip(self.names, self.processes, strict=True):
            if process.poll() is not None:
                raise BenchError(
                    f"worker {name} exited with {process.returncode}:\n{self.log_tail(name)}"
                )

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.log_dir / f"{name}.log"
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"  (no log at {path})"
        return "\n".join("  | " + line for line in tail)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM each process group (warm shutdown), SIGKILL whatever is left after timeout."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        end = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                _say(f"  worker pid {process.pid} ignored SIGTERM for {timeout:.0f}s; killing")
            # pool children left behind by a dead or stuck main process go too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        self.processes = []


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

    # -- setup ------------------------------------------------------------------------------

    def setup(self) -> dict[str, str]:
        from ihub.demo.source import DemoSource, DemoSourceOptions

        self._claim_redis_db()
        self._create_database()
        self.redis.flushdb()
        _say(f"redis:      {_safe(self.args.redis)} (flushed)")
        self.source = DemoSource(DemoSourceOptions(page_size_max=1000)).start()
        self.source.seed(self.args.records)
        _say(f"source:     {self.source.records_url} ({self.args.records} records)")
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
        _say(f"database:   {_safe(self.db_url)} (migrated)")
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
        """ihub/demo/demo.yaml's integration, with the page limit of this benchmark."""
        config = yaml.safe_load(DEMO_CONFIG.read_text())
        integration = config["integrations"][INTEGRATION]
        integration["source"]["pagination"]["limit"] = self.args.page_limit
        integration["fetch"] = {"max_pages": 1_000_000}  # the benchmark times one whole run
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))

    # -- ihub -------------------------------------------------------------------------------

    def run_ihub(self, env: dict[str, str]) -> dict[str, Any]:
        from ihub.cli.runner import OPEN
        from models import queue
        from pipeline import sync
        from pipeline.hub import Hub
        from tasks.app import get_app
        from tasks.records import publish_records

        n, a = self.args.records, self.args
        app = get_app()
        if a.precreate_table:
            self._precreate_table(Hub.from_env())
        workers = Workers("tasks", "bench", a.workers, a.concurrency, env, self.tmp)
        self.workers.append(workers)
        workers.start()
        took = workers.wait_ready(app, self.deadline)
        _say(f"ihub:       {a.workers} worker(s) x {a.concurrency} ready in {took:.1f}s")

        hub = Hub.from_env()
        started = time.monotonic()
        first_publish: float | None = None
        published = 0
        last_line = started

        def publish(row_ids: list[int]) -> None:
            nonlocal first_publish, published, last_line
            if first_publish is None:
                first_publish = time.monotonic()
            publish_records(app, row_ids)
            published += len(row_ids)
            now = time.monotonic()
            if now > self.deadline.end:
                raise _FetchTimeout
            if now - last_line >= PROGRESS_EVERY:
                last_line = now
                _say(f"  fetch   {now - started:7.1f}s  staged+published={published}/{n}")

        try:
            result = sync.fetch_delta(hub, INTEGRATION, publish, owner="bench")
        except _FetchTimeout:
            raise BenchError(f"--timeout {a.timeout:.0f}s exceeded while fetching") from None
        fetched = time.monotonic()
        if result.status != "ok" or result.run_id is None:
            raise BenchError(f"fetch did not run: status={result.status}")
        run_id = result.run_id
        done_at_fetch = queue.run_counts(self.db_url, run_id)["done"]
        if result.staged != n or result.unpublished:
            raise BenchError(
                f"fetch staged {result.staged} of {n} record(s), "
                f"{result.unpublished} left unpublished"
            )
        _say(
            f"  fetch   {fetched - started:7.1f}s  done: {result.fetched} record(s) "
            f"in {result.pages} page(s); {done_at_fetch} already processed"
        )

        def progress() -> tuple[bool, str]:
            counts = queue.run_counts(self.db_url, run_id)
            line = " ".join(f"{k}={v}" for k, v in counts.items())
            elapsed = time.monotonic() - started
            return not any(counts[s] for s in OPEN), f"  process {elapsed:7.1f}s  {line}"

        done = self._wait(progress, "waiting for every record to be processed")
        counts = queue.run_counts(self.db_url, run_id)
        if counts["done"] != n:
            dead = queue.list_dead(self.db_url, integration=INTEGRATION, limit=5)
            reasons = "".join(
                f"\n  dead {d['record_id']} after {d['attempts']} attempt(s) on {d['worker']}: "
                f"{d['error_class']}: {d['message']}"
                for d in dead
            )
            if "pg_type_typname_nsp_index" in reasons and not a.precreate_table:
                reasons += (
                    "\n  (workers raced to create the sink table: a known engine bug, see "
                    "bench/README.md; --precreate-table works around it)"
                )
            raise BenchError(f"not every record ended done: {counts}{reasons}")
        rows = self._count_rows()
        if rows != n:
            raise BenchError(f"table {INTEGRATION} holds {rows} row(s), expected {n}")
        _say(f"  verified: {rows} rows in table {INTEGRATION}, run counts {counts}")
        workers.stop()
        assert first_publish is not None
        left = n - done_at_fetch  # too few left when the workers kept up: no drain figure
        drain = _rate(left, done - fetched) if left >= n / 20 else None
        return {
            "pages": result.pages,
            "fetch_seconds": fetched - started,
            "processing_seconds": done - first_publish,
            "e2e_seconds": done - started,
            "tail_seconds": done - fetched,
            "drain_rps": drain,
        }

    def _precreate_table(self, hub: Any) -> None:
        """Let the engine's own sink create the target table from one source record, in this
        process alone, so that the workers never race to create it (see bench/README.md)."""
        sample = next(iter(self.source.snapshot().values()))
        probe = {**sample, "id": "__ihub_bench_probe__"}
        sink = hub.sink(INTEGRATION)
        sink.upsert(probe, "0")
        with sink.engine.begin() as connection:
            connection.execute(
                text(f'DELETE FROM "{sink.table_name}" WHERE "{sink.key}" = :id'),
                {"id": probe["id"]},
            )
        _say(f"  table {sink.table_name} created up front (--precreate-table)")

    def _count_rows(self) -> int:
        from models.db import get_engine

        with get_engine(self.db_url).connect() as connection:
            return int(connection.execute(text(f"SELECT count(*) FROM {INTEGRATION}")).scalar())

    def _wait(self, check: Callable[[], tuple[bool, str]], what: str) -> float:
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
                _say(line)
            self.deadline.check(what)
            time.sleep(POLL_EVERY)

    # -- ceiling ----------------------------------------------------------------------------

    def run_noop(self, env: dict[str, str]) -> dict[str, float]:
        if str(BENCH) not in sys.path:
            sys.path.insert(0, str(BENCH))
        import noop_tasks

        n, a = self.args.records, self.args
        self.redis.flushdb()  # nothing of the ihub phase may be consumed by the no-op workers
        path = os.pathsep.join(filter(None, [str(BENCH), env.get("PYTHONPATH")]))
        noop_env = {**env, "PYTHONPATH": path}
        workers = Workers("noop_tasks", "noop", a.workers, a.concurrency, noop_env, self.tmp)
        self.workers.append(workers)
        workers.start()
        took = workers.wait_ready(noop_tasks.app, self.deadline)
        _say(f"no-op:      {a.workers} worker(s) x {a.concurrency} ready in {took:.1f}s")
        self.redis.delete(noop_tasks.COUNTER)

        task: Any = noop_tasks.app.tasks[noop_tasks.TASK]
        started = time.monotonic()
        with noop_tasks.app.producer_or_acquire() as producer:
            for i in range(n):
                task.apply_async((i,), producer=producer)
        published = time.monotonic()
        _say(f"  publish {published - started:7.1f}s  {n} no-op task(s) published")

        def progress() -> tuple[bool, str]:
            count = int(self.redis.get(noop_tasks.COUNTER) or 0)
            elapsed = time.monotonic() - started
            return count >= n, f"  no-op   {elapsed:7.1f}s  done={count}/{n}"

        done = self._wait(progress, "waiting for the no-op tasks")
        count = int(self.redis.get(noop_tasks.COUNTER) or 0)
        if count != n:
            raise BenchError(f"{count} no-op task(s) ran, expected {n}")
        workers.stop()
        return {"noop_publish_seconds": published - started, "noop_seconds": done - started}

    # -- teardown ---------------------------------------------------------------------------

    def cleanup(self) -> None:
        for workers in self.workers:
            try:
                workers.stop()
            except Exception as exc:
                _say(f"  could not stop {workers.prefix} workers: {exc}")
        if self.source is not None:
            self.source.stop()
        with contextlib.suppress(Exception):
            from models.db import dispose_all

            dispose_all()
        if self.db_created:
            try:
                self._drop_database()
                _say(f"dropped database {self.db_name}")
            except Exception as exc:
                _say(f"could not drop database {self.db_name}: {exc}")
        if self.redis_lock is not None:
            try:
                self.redis.flushdb()
                self._release_redis_db()
            except redis.RedisError as exc:
                _say(f"could not flush {_safe(self.args.redis)}: {exc}")
        if (self.failed and self.workers) or self.args.keep:
            _say(f"worker logs and config kept in {self.tmp}")
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

    def run(self) -> Result:
        env = self.setup()
        ihub = self.run_ihub(env)
        noop = self.run_noop(env)
        n, a = self.args.records, self.args
        processing_rps = _rate(n, ihub["processing_seconds"])
        e2e_rps = _rate(n, ihub["e2e_seconds"])
        noop_tps = _rate(n, noop["noop_seconds"])
        return Result(
            records=n,
            workers=a.workers,
            concurrency=a.concurrency,
            pages=int(ihub["pages"]),
            fetch_seconds=ihub["fetch_seconds"],
            processing_seconds=ihub["processing_seconds"],
            e2e_seconds=ihub["e2e_seconds"],
            tail_seconds=ihub["tail_seconds"],
            fetch_rps=_rate(n, ihub["fetch_seconds"]),
            processing_rps=processing_rps,
            e2e_rps=e2e_rps,
            drain_rps=ihub["drain_rps"],
            noop_publish_seconds=noop["noop_publish_seconds"],
            noop_seconds=noop["noop_seconds"],
            noop_tps=noop_tps,
            ratio=processing_rps / noop_tps,
            e2e_ratio=e2e_rps / noop_tps,
        )


def summary(r: Result) -> str:
    publish_rps = _rate(r.records, r.noop_publish_seconds)
    return "\n".join(
        [
            "",
            "== ihub end-to-end benchmark ==",
            f"records                {r.records} ({r.pages} pages)",
            f"workers x concurrency  {r.workers} x {r.concurrency}",
            f"fetch                  {r.fetch_rps:8.0f} rec/s    ({r.fetch_seconds:.2f} s)",
            f"processing             {r.processing_rps:8.0f} rec/s    "
            f"({r.processing_seconds:.2f} s from the first publish, "
            f"{r.tail_seconds:.2f} s of it after the fetch)",
            f"  after the fetch      {r.drain_rps:8.0f} rec/s    (the backlog alone, no fetch "
            "competing)"
            if r.drain_rps is not None
            else "  after the fetch           n/a        (the workers kept up with the fetch)",
            f"end to end             {r.e2e_rps:8.0f} rec/s    ({r.e2e_seconds:.2f} s)",
            f"no-op ceiling          {r.noop_tps:8.0f} tasks/s  ({r.noop_seconds:.2f} s; "
            f"publishing alone {publish_rps:.0f}/s)",
            f"ratio ihub/no-op       {r.ratio:8.2f}           (processing; end to end "
            f"{r.e2e_ratio:.2f})",
        ]
    )


def _safe(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.rsplit("@", 1)[-1]


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        value = kind(raw)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {raw}")
        return value

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/e2e.py",
        description="ihub end-to-end throughput on Postgres + Redis, next to a no-op ceiling",
    )
    p.add_argument("--records", type=_positive(int), default=10000)
    p.add_argument("--workers", type=_positive(int), default=2, help="worker processes")
    p.add_argument("--concurrency", type=_positive(int), default=2, help="pool size per worker")
    p.add_argument(
        "--pg",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="a Postgres URL allowed to CREATE/DROP DATABASE (the bench gets its own database)",
    )
    p.add_argument(
        "--redis",
        default="redis://127.0.0.1:6379/14",
        help="broker URL; this Redis database is FLUSHED at start and at the end",
    )
    p.add_argument("--page-limit", type=_positive(int), default=500, help="records per page")
    p.add_argument("--timeout", type=_positive(float), default=900.0, help="seconds, whole run")
    p.add_argument(
        "--precreate-table",
        action="store_true",
        help="create the sink table before the workers start (works around the table race)",
    )
    p.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    p.add_argument("--keep", action="store_true", help="keep the temp dir with worker logs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    bench = Bench(args)
    result: Result | None = None
    code = 0
    try:
        result = bench.run()
    except KeyboardInterrupt:
        _say("\ninterrupted; cleaning up")
        code = 130
    except BenchError as exc:
        _say(f"FAILED: {exc}")
        for workers in bench.workers:
            for name in workers.names:
                _say(f"{name}.log (tail):\n{workers.log_tail(name)}")
        bench.failed, code = True, 1
    except BaseException:
        bench.failed = True
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        try:
            bench.cleanup()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if result is not None:
        _say(summary(result))
        if args.json:
            _say(json.dumps(asdict(result)))
    return code


if __name__ == "__main__":
    sys.exit(main())
