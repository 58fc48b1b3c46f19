"""Queue depth comes from one helper, through kombu's channel, with IHUB_BROKER_PREFIX applied;
/metrics names its families the Prometheus way and says which release runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from ihub.web.server import serve
from models import migrate

REPO = Path(__file__).resolve().parent.parent
PREFIX = "tenant-a:"


@pytest.fixture
def queued(redis_url: str) -> str:
    """Three messages on the prefixed process queue, one on the fetch queue, one unprefixed."""
    client = redis.Redis.from_url(redis_url)
    client.rpush(f"{PREFIX}ihub.process", "a", "b", "c")
    client.rpush(f"{PREFIX}ihub.fetch", "f")
    client.rpush("ihub.process", "not ours")
    client.close()
    return redis_url


def test_status_counts_the_prefixed_queues(queued: str, tmp_path: Path, sqlite_url: str) -> None:
    """`ihub status --json` with IHUB_BROKER_PREFIX counts that prefix's queues only."""
    env = {
        **os.environ,
        "IHUB_BROKER_PREFIX": PREFIX,
        "IHUB_BROKER_URL": queued,
        "IHUB_DATABASE_URL": sqlite_url,
        "IHUB_HOME": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "ihub", "status", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["queues"] == {"ihub.fetch": 1, "ihub.process": 3}


def test_reconcile_reads_the_prefixed_process_queue(
    queued: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconciler's depth is the same helper, with the app's own transport options."""
    monkeypatch.setenv("IHUB_HOME", str(tmp_path))
    monkeypatch.setenv("IHUB_BROKER_URL", queued)
    monkeypatch.setenv("IHUB_CONFIG", str(tmp_path / "none.yaml"))
    from tasks.app import create_app
    from tasks.maintenance import process_queue_depth

    app = create_app()
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "global_keyprefix": PREFIX,
    }
    assert process_queue_depth(app) == 3
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "global_keyprefix": "",
    }
    assert process_queue_depth(app) == 1


def test_build_info_and_status_gauge_names(tmp_path: Path) -> None:
    """/metrics has ihub_build_info{version} = 1 and the per-status gauge has no label in its
    name."""
    from importlib.metadata import version

    url = f"sqlite:///{tmp_path}/m.db"
    migrate.upgrade(url)
    handle = serve(url, None, port=0)
    try:
        text = requests.get(handle.url + "/metrics", timeout=30).text
    finally:
        handle.stop()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    [info] = families["ihub_build_info"].samples
    assert info.labels == {"version": version("ihub")} and info.value == 1.0
    assert families["ihub_staged_records"].type == "gauge"
    assert not any("by_status" in name for name in families)
