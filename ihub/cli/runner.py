"""Starting Celery's own worker and beat as child processes, and waiting on a fetch run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from models import queue, runs
from models.schema import OPEN


def celery_command(kind: str, extra: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "tasks", kind, *extra]


def start_celery(kind: str, extra: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A worker or beat in its own process group, so that it can be stopped as a whole."""
    return subprocess.Popen(celery_command(kind, extra), env=env, start_new_session=True)


def stop(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()


def wait_for_run(
    database_url: str,
    run_id: int,
    *,
    timeout: float,
    progress: Callable[[dict[str, int]], None] | None = None,
    interval: float = 1.0,
) -> dict[str, int]:
    """Poll until no record of the run is open; the final counts. Raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        counts = queue.run_counts(database_url, run_id)
        if progress:
            progress(counts)
        if not any(counts[s] for s in OPEN):
            return counts
        if time.monotonic() > deadline:
            run = runs.get(database_url, run_id)
            raise TimeoutError(
                f"run {run_id} still has open records after {timeout:.0f}s: {counts} ({run})"
            )
        time.sleep(interval)
