"""`ihub flower`: refuses to be exposed without a login, and a real Flower on the test broker
answers 401 to anonymous UI/API requests while /metrics and /healthcheck stay open
(PITFALLS 40), and shows tasks whose arguments are row ids only."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from ihub.cli.flower import DEFAULTS, option, prepare
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
AUTH = ("ops", "fl0wer-pass")


def test_loopback_by_default_and_history_capped() -> None:
    """Without options Flower binds 127.0.0.1, keeps at most 10000 tasks, and needs no auth."""
    args, _ = prepare([], {})
    assert option(args, "address") == "127.0.0.1"
    assert option(args, "max_tasks") == "10000" and "--max_tasks=10000" in DEFAULTS


@pytest.mark.parametrize("address", ["--address=0.0.0.0", "--address=", "--address=192.0.2.1"])
def test_other_addresses_need_basic_auth(address: str) -> None:
    """A non-loopback address is refused without --basic-auth or IHUB_FLOWER_BASIC_AUTH."""
    with pytest.raises(ConfigError, match="basic-auth"):
        prepare([address], {})
    prepare([address, "--basic-auth=ops:pw"], {})
    prepare([address, "--basic_auth=ops:pw"], {})
    _, env = prepare([address], {"IHUB_FLOWER_BASIC_AUTH": "ops:pw"})
    assert env["FLOWER_BASIC_AUTH"] == "ops:pw"  # Flower's own variable: not on the command line


def test_cli_refuses_before_starting_flower(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ihub flower --address=0.0.0.0` exits 2 with the reason and never execs Flower."""
    from ihub import cli

    def no_exec(*_: object) -> None:
        raise AssertionError("Flower must not start")

    monkeypatch.setattr(os, "execv", no_exec)
    monkeypatch.delenv("IHUB_FLOWER_BASIC_AUTH", raising=False)
    monkeypatch.delenv("FLOWER_BASIC_AUTH", raising=False)
    result = CliRunner().invoke(cli.main, ["flower", "--address=0.0.0.0"])
    assert result.exit_code == 2 and "IHUB_FLOWER_BASIC_AUTH" in result.output


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def flower(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """`ihub flower` as a real process on the test broker, with basic auth from the env."""
    port = _free_port()
    env = {
        **os.environ,
        "IHUB_BROKER_URL": redis_url,
        "IHUB_HOME": str(tmp_path),
        "IHUB_CONFIG": str(tmp_path / "none.yaml"),
        "IHUB_FLOWER_BASIC_AUTH": ":".join(AUTH),
    }
    env.pop("FLOWER_BASIC_AUTH", None)
    log = (tmp_path / "flower.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "ihub", "flower", f"--port={port}"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(url + "/healthcheck", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Flower did not start: {(tmp_path / 'flower.log').read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(1)  # its history is in memory only: nothing to lose by a kill
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def test_real_flower_requires_auth_except_metrics_and_healthcheck(
    flower: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Anonymous UI and API get 401; /metrics and /healthcheck answer 200 (Flower's own
    exemption, PITFALLS 40); with the login, the tasks seen carry only a row id."""
    for path in ("/", "/workers", "/tasks", "/api/workers", "/api/tasks"):
        assert requests.get(flower + path, timeout=5).status_code == 401, path
    assert requests.get(flower + "/metrics", timeout=5).status_code == 200
    assert requests.get(flower + "/healthcheck", timeout=5).text == "OK"
    assert requests.get(flower + "/api/workers", auth=AUTH, timeout=10).status_code == 200

    monkeypatch.setenv("IHUB_BROKER_URL", redis_url)
    monkeypatch.setenv("IHUB_HOME", str(tmp_path))
    monkeypatch.setenv("IHUB_CONFIG", str(tmp_path / "none.yaml"))
    from tasks.app import create_app
    from tasks.records import publish_records

    app = create_app()  # task_send_sent_event: Flower sees the task while it is queued
    deadline, seen = time.monotonic() + 20, []
    try:
        while not seen and time.monotonic() < deadline:
            publish_records(app, [4242])
            time.sleep(0.5)
            tasks = requests.get(flower + "/api/tasks", auth=AUTH, timeout=5).json()
            seen = [t for t in tasks.values() if t.get("name") == "ihub.process_record"]
    finally:
        app.close()
    assert seen, "Flower saw no task-sent event"
    assert re.fullmatch(r"[\[(]4242,?[\])]", seen[0]["args"]), seen[0]
    assert seen[0]["kwargs"] in ("{}", {})
