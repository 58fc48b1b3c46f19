"""The embedded redis-server is a documented daemon: processes that put work on it start it,
`ihub stop` stops it, `ihub status` says whether it runs; a read-only command never starts it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from ihub.cli import main
from tasks.broker import embedded_running, stop_embedded
from tests.chaostools import wait_until

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """IHUB_HOME with a migrated database, no config, the embedded broker as the default."""
    home = tmp_path / "home"
    monkeypatch.setenv("IHUB_HOME", str(home))
    monkeypatch.setenv("IHUB_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("IHUB_CONFIG", str(tmp_path / "none.yaml"))
    monkeypatch.delenv("IHUB_BROKER_URL", raising=False)
    yield home
    stop_embedded(home)  # whatever a failing test left behind


def test_building_the_app_starts_no_broker(home: Path) -> None:
    """`create_app()` in a process of its own leaves no redis-server behind, nor starts one."""
    code = "from tasks.app import create_app; print(create_app().conf.broker_url)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"redis+socket://{home / 'redis.sock'}"
    assert not embedded_running(home) and not (home / "redis.pid").exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_web_starts_no_broker(home: Path) -> None:
    """`ihub web` serves its page without starting the embedded broker, and leaves none."""
    port = _free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "ihub", "web", "--port", str(port)],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def serving() -> bool:
        try:
            return requests.get(f"{url}/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_until(serving, timeout=60, what="ihub web answering /healthz")
        assert requests.get(f"{url}/api/status", timeout=10).json()["queues"] is None
        assert not embedded_running(home)
    finally:
        web.terminate()
        web.wait(timeout=30)
    assert not embedded_running(home)


def test_publishing_starts_it_status_shows_it_and_stop_stops_it(home: Path) -> None:
    """Putting work on the broker starts it; `ihub status` says so; `ihub stop` ends it."""
    from tasks.app import create_app
    from tasks.records import publish_records

    assert "embedded broker: stopped" in CliRunner().invoke(main, ["status"]).output
    publish_records(create_app(), [])
    assert embedded_running(home)
    assert "embedded broker: running" in CliRunner().invoke(main, ["status"]).output
    assert CliRunner().invoke(main, ["stop"]).output == "embedded broker stopped\n"
    wait_until(lambda: not embedded_running(home), timeout=30, what="redis-server gone")
    assert CliRunner().invoke(main, ["stop"]).output == "embedded broker was not running\n"
