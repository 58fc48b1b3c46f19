"""Tools for the reliability tests: a TCP proxy that cuts a database off, a private
redis-server to lose, worker and beat processes to kill, and a target table that logs every
write that changed a row (so a duplicate *effect* can be counted, not only duplicate rows)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import text

from ihub.cli.runner import start_celery, stop
from ihub.demo.source import DemoSource
from models import queue
from models.db import get_engine
from pipeline import sync
from pipeline.errors import IhubError, PermanentError, TransientError
from pipeline.hub import Hub
from tests.workers import service_env, wait_for_workers, write_config

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TcpProxy:
    """127.0.0.1:port → upstream; ``stop()`` refuses new connections and cuts the open ones."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        listener = self._bind()
        listener.listen(128)
        listener.settimeout(0.2)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _bind(self, timeout: float = 30.0) -> socket.socket:
        """A listener on our port. Restarted, the port can stay taken for a moment: a cut
        connection whose client has not closed its end yet still holds it."""
        deadline = time.monotonic() + timeout
        while True:
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind(("127.0.0.1", self.port))
                return listener
            except OSError as exc:
                listener.close()
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._open = self._open, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class RedisServer:
    """A redis-server of this test's own, keeping nothing on disk, to kill and restart."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("redis-server did not start")
            time.sleep(0.05)
        client.close()
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Cluster:
    """Worker and beat processes of one test, each in its own process group."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
        self.log_dir = log_dir
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.beat: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start_worker(self, name: str, concurrency: int = 2, *extra: str) -> None:
        args = ["--concurrency", str(concurrency), "--loglevel", "INFO"]
        args += ["--hostname", f"{name}-{os.getpid()}@%h", "--without-gossip", "--without-mingle"]
        args += ["--logfile", str(self.log_dir / f"{name}.log"), *extra]
        self.workers[name] = start_celery("worker", args, self.env)

    def start_beat(self) -> None:
        schedule = self.log_dir / "celerybeat-schedule"
        args = ["--loglevel", "INFO", "--schedule", str(schedule)]
        self.beat = start_celery(
            "beat", [*args, "--logfile", str(self.log_dir / "beat.log")], self.env
        )

    def wait_ready(self, count: int | None = None) -> None:
        wait_for_workers(self.env, len(self.workers) if count is None else count)

    def pool_children(self, name: str) -> list[int]:
        pid = self.workers[name].pid
        found: list[int] = []
        for task in Path(f"/proc/{pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                found += [int(p) for p in task.read_text().split()]
        return found

    def kill_child(self, rng: random.Random) -> bool:
        """SIGKILL one pool process of a random worker: its task is lost mid-flight."""
        names = [n for n, p in self.workers.items() if p.poll() is None]
        children = self.pool_children(rng.choice(names)) if names else []
        if not children:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(rng.choice(children), signal.SIGKILL)
            self.kills += 1
        return True

    def kill_worker(self, name: str) -> None:
        """SIGKILL a whole worker (main process and pool): what it held is in Redis unacked."""
        process = self.workers[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self.kills += 1

    def stop(self) -> None:
        for process in [*self.workers.values(), *([self.beat] if self.beat else [])]:
            stop(process)


@contextlib.contextmanager
def cluster(env: dict[str, str], log_dir: Path) -> Iterator[Cluster]:
    running, failed = Cluster(env, log_dir), False
    try:
        yield running
    except BaseException:
        failed = True
        raise
    finally:
        running.stop()
        if failed:  # pytest shows it with the failure: what each process did last
            print_log_tails(log_dir)


def print_log_tails(log_dir: Path, lines: int = 40) -> None:
    for path in sorted(log_dir.glob("*.log")):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        print(f"----- {path.name} (last {len(tail)} lines)", *tail, sep="\n")


def chaos_env(**settings: float | str) -> dict[str, str]:
    """Short deadlines so that the reconciler acts within seconds (kept under the limits that
    tasks.checks enforces for the visibility timeout)."""
    values = {
        "IHUB_RECONCILE_AFTER": 6,
        "IHUB_PROCESS_TIME_LIMIT": 10,
        "IHUB_FETCH_TIME_LIMIT": 25,
        "IHUB_VISIBILITY_TIMEOUT": 60,
        **settings,
    }
    return {k: str(v) for k, v in values.items()}


TARGET_DDL = """
CREATE TABLE incidents (
    id TEXT PRIMARY KEY, _ihub_version TEXT NOT NULL,
    _ihub_synced_at TEXT DEFAULT CURRENT_TIMESTAMP, number BIGINT, short_description TEXT,
    priority BIGINT, state TEXT, version BIGINT, updated_at TEXT, details TEXT);
CREATE TABLE sink_writes (id TEXT NOT NULL, version TEXT NOT NULL);
CREATE FUNCTION log_sink_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sink_writes VALUES (NEW.id, NEW._ihub_version);
    PERFORM pg_sleep({sleep});
    RETURN NULL;
END $$;
CREATE TRIGGER incidents_writes AFTER INSERT OR UPDATE ON incidents
    FOR EACH ROW EXECUTE FUNCTION log_sink_write();
"""


def prepare_target(url: str, *, sleep: float = 0.0) -> None:
    """The target table made in advance (so its column types do not depend on which record
    arrives first), with a trigger that logs every write that changed a row."""
    with get_engine(url).begin() as connection:
        connection.exec_driver_sql(TARGET_DDL.format(sleep=sleep))


def write_stats(url: str) -> dict[str, int]:
    query = "SELECT count(*), count(DISTINCT (id, version)), count(DISTINCT id) FROM sink_writes"
    with get_engine(url).connect() as connection:
        total, versions, ids = connection.execute(text(query)).one()
    return {"writes": int(total), "duplicates": int(total) - int(versions), "ids": int(ids)}


def target_rows(url: str) -> dict[str, tuple[int, str]]:
    with get_engine(url).connect() as connection:
        rows = connection.execute(text("SELECT id, version, updated_at FROM incidents"))
        return {r[0]: (int(r[1]), r[2]) for r in rows}


def source_rows(source: DemoSource) -> dict[str, tuple[int, str]]:
    return {k: (int(v["version"]), v["updated_at"]) for k, v in source.snapshot().items()}


def takeovers(url: str) -> int:
    """Claims that took a row over from a lost holder, over every staged row."""
    query = "SELECT coalesce(sum(deliveries), 0) FROM ihub_records"
    with get_engine(url).connect() as connection:
        return int(connection.execute(text(query)).scalar_one())


def wait_until(
    condition: Callable[[], Any],
    *,
    timeout: float,
    interval: float = 0.5,
    what: str = "",
    state: Callable[[], Any] | None = None,
) -> Any:
    """``condition()`` once it is true; TimeoutError after ``timeout`` s, naming ``what`` and,
    when given, ``state()`` then (what the wait saw last)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f"; {state()}" if state is not None else ""
            raise TimeoutError(f"not within {timeout:.0f}s: {what}{seen}")
        time.sleep(interval)


def settled(url: str) -> bool:
    counts = queue.counts(url)
    return not any(counts[s] for s in ("pending", "processing", "retrying"))


def task_retries(log_dir: Path) -> int:
    """Retries the workers logged (a transient error, or the database out)."""
    return sum(p.read_text().count("] retry: Retry in") for p in log_dir.glob("*.log"))


def executions(log_dir: Path) -> int:
    """process_record runs that finished (done, skipped as a duplicate, dead, ...)."""
    return sum(
        line.count("succeeded in")
        for p in log_dir.glob("*.log")
        for line in p.read_text().splitlines()
        if "ihub.process_record[" in line
    )


def compare(
    database_url: str, target_url: str, source: DemoSource, started: float, log_dir: Path
) -> dict[str, Any]:
    """The figures of the README table: records, retries, dead letters, missing, duplicate
    effects, seconds. Missing counts records absent from the target or not at their latest
    version; retries are the workers' task retries plus crash takeovers (a claim of a row
    whose holder was lost)."""
    want, got = source_rows(source), target_rows(target_url)
    return {
        "records": len(want),
        "retries": task_retries(log_dir),
        "takeovers": takeovers(database_url),
        "dead": queue.counts(database_url)["dead"],
        "missing": sum(1 for key, value in want.items() if got.get(key) != value),
        "extra": len(set(got) - set(want)),
        "duplicates": write_stats(target_url)["duplicates"],
        "seconds": round(time.monotonic() - started, 1),
    }


def assert_nothing_lost(figures: dict[str, Any], database_url: str) -> None:
    """No record missing, extra, written twice or dead; a dead letter's reason in the message."""
    lost = {key: figures[key] for key in ("missing", "extra", "duplicates", "dead")}
    letters = queue.list_dead(database_url, limit=5) if figures["dead"] else []
    reasons = [f"{dead['error_class']}: {dead['message']}" for dead in letters]
    assert set(lost.values()) == {0}, f"{lost}; dead letters: {reasons}"


def report(scenario: str, figures: dict[str, Any]) -> None:
    """Print the figures; append them to $IHUB_CHAOS_REPORT when it is set."""
    line = json.dumps({"scenario": scenario, **figures}, sort_keys=True)
    print(f"\nCHAOS {line}")
    path = os.environ.get("IHUB_CHAOS_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def build_stack(
    tmp_path: Path,
    monkeypatch: Any,
    source: DemoSource,
    database_url: str,
    broker_url: str,
    env: dict[str, str] | None = None,
    **overrides: object,
) -> tuple[dict[str, str], Hub, Any]:
    """Config, environment (for the workers and this process), a Hub and a fresh Celery app."""
    config = write_config(
        tmp_path / "integrations.yaml", source.url, source.options.client_secret, **overrides
    )
    full = {**service_env(tmp_path, config, database_url, broker_url), **(env or {})}
    import celeryconfig  # noqa: F401  (read once per process, at import: keep its default here)

    for key, value in full.items():
        if key != "IHUB_VISIBILITY_TIMEOUT":  # for the workers only; this process only publishes
            monkeypatch.setenv(key, value)
    from tasks import app as app_module
    from tasks import context

    monkeypatch.setattr(app_module, "_app", None)
    monkeypatch.setattr(context, "_hub", None)
    return full, Hub.from_env(), app_module.get_app()


def fetch(hub: Hub, app: Any) -> sync.FetchResult:
    """One fetch run, as one scheduled fetch_delta does (it may end with more to read)."""
    from tasks.records import publish_records

    return sync.fetch_delta(hub, "incidents", lambda ids: publish_records(app, ids), owner="test")


def fetch_to_end(hub: Hub, app: Any, *, max_runs: int = 100) -> sync.FetchResult:
    """One delta to its end: a run its budget cut short goes on at once, as the fetch task
    does (the chaos settings give a fetch 12.5 s)."""
    for _ in range(max_runs):
        result = fetch(hub, app)
        if not result.more:
            return result
    raise AssertionError(f"the delta did not end within {max_runs} runs")


def classify_body(response: Any) -> IhubError | None:
    """A classify hook for a target that answers 200 {"ok": false, ...} when it failed."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("ok", True):
        return None
    if "retry_in" in body:
        return TransientError(f"target busy: {body['error']}", float(body["retry_in"]))
    return PermanentError(f"target refused in a 200: {body['error']}")
