"""Real Celery worker processes for end-to-end tests, and the environment they share."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from ihub.cli.runner import start_celery, stop


def write_config(path: Path, source_url: str, secret: str, **overrides: object) -> Path:
    """An integration `incidents` over a DemoSource, SQL sink table `incidents`."""
    integration: dict[str, object] = {
        "schedule": 3600,
        "source": {
            "url": f"{source_url}/api/records",
            "auth": {
                "type": "oauth2",
                "grant_type": "client_credentials",
                "token_url": f"{source_url}/oauth/token",
                "client_id": "demo-client",
                "client_secret": secret,
                "refresh_margin": 5,
            },
            "records": "data",
            "id": "id",
            "updated": "updated_at",
            "delta": {"param": "updated_since", "lookback": 30},
            "pagination": {"type": "cursor", "limit": 200},
        },
        "sink": {"type": "sql", "table": "incidents", "key": "id"},
        "retry": {"max_retries": 8, "backoff": 0.2, "backoff_max": 1.0},
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            integration[section] = {**integration[section], field: value}  # type: ignore[dict-item]
        else:
            integration[section] = value
    path.write_text(yaml.safe_dump({"integrations": {"incidents": integration}}))
    return path


def service_env(tmp_path: Path, config: Path, database_url: str, broker_url: str) -> dict[str, str]:
    return {
        "IHUB_HOME": str(tmp_path / "home"),
        "IHUB_CONFIG": str(config),
        "IHUB_DATABASE_URL": database_url,
        "IHUB_BROKER_URL": broker_url,
        "IHUB_SECRET_KEY": "test-secret-key-0123456789-abcdefghijklmnop",
        "IHUB_RECONCILE_AFTER": "20",
    }


@contextmanager
def workers(
    env: dict[str, str], count: int = 2, concurrency: int = 2, log_dir: Path | None = None
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` worker processes, started and answering ping before the block runs."""
    full = {**os.environ, **env}
    processes = []
    for n in range(count):
        args = [
            "--concurrency",
            str(concurrency),
            "--loglevel",
            "INFO",
            "--hostname",
            f"test{n}-{os.getpid()}@%h",
        ]
        if log_dir:
            args += ["--logfile", str(log_dir / f"worker{n}.log")]
        processes.append(start_celery("worker", args, full))
    try:
        wait_for_workers(full, count)
        yield processes
    finally:
        for process in processes:
            stop(process)


def wait_for_workers(env: dict[str, str], count: int, timeout: float = 120) -> None:
    """Ping until ``count`` workers answer; a ping slow to start (a loaded machine) is only one
    try, and the whole wait is bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    command = [sys.executable, "-m", "celery", "-A", "tasks", "inspect", "ping", "--timeout", "2"]
    while time.monotonic() < deadline:
        left = max(5.0, deadline - time.monotonic())
        try:
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            continue
        if result.stdout.count("pong") >= count:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{count} workers did not answer ping in {timeout}s")
