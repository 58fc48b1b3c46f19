"""What an operator scripts against: --version, status --check, confirmations, one-line errors,
an unsupported database refused up front."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner

from ihub.cli import main
from models import integrations

REPO = Path(__file__).resolve().parent.parent


def write_config(tmp_path: Path, sink: dict[str, str]) -> Path:
    integration = {
        "source": {"url": "http://127.0.0.1:9/records", "auth": {"type": "none"}},
        "sink": sink,
    }
    path = tmp_path / "integrations.yaml"
    path.write_text(json.dumps({"integrations": {"crm": integration}}), encoding="utf-8")
    return path


@pytest.fixture
def env(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("IHUB_HOME", str(tmp_path))
    monkeypatch.setenv("IHUB_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("IHUB_CONFIG", str(write_config(tmp_path, {"table": "t"})))
    monkeypatch.delenv("IHUB_BROKER_URL", raising=False)
    return sqlite_url


def test_check_refuses_a_mysql_sink(tmp_path: Path) -> None:
    """A sink URL of a database the upsert does not support is refused by `ihub check`."""
    path = write_config(tmp_path, {"table": "t", "url": "mysql://ihub@127.0.0.1/crm"})
    result = CliRunner().invoke(main, ["check", "--config", str(path)])
    assert result.exit_code == 2
    assert f"{path}: integrations.crm.sink.url: Value error, 'mysql' databases are not " in (
        result.output
    )


def test_a_mysql_database_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """IHUB_DATABASE_URL=mysql://... is refused with the variable and the reason, exit 2, its
    password masked."""
    monkeypatch.setenv("IHUB_DATABASE_URL", "mysql://ihub:pw-123@127.0.0.1/ihub")
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith("error: environment: invalid settings")
    assert "IHUB_DATABASE_URL: value error, 'mysql' databases are not supported" in result.output
    assert "pw-123" not in result.output


def test_version_is_the_package_version() -> None:
    """`ihub --version` prints the installed version and exits 0."""
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output == f"ihub, version {version('ihub')}\n"


def test_status_check_fails_on_a_paused_or_failing_integration(env: str) -> None:
    """`ihub status --check` exits 0 while all run, 1 naming a paused and a failing one."""
    integrations.mark_fetch(env, "crm", success=True)
    integrations.mark_fetch(env, "erp", success=True)
    assert CliRunner().invoke(main, ["status", "--check"]).exit_code == 0
    integrations.pause_for_reauth(env, "crm", "invalid_grant")
    time.sleep(0.01)  # the failing fetch must be later than the success, to the microsecond
    integrations.mark_fetch(env, "erp", success=False)
    result = CliRunner().invoke(main, ["status", "--check"])
    assert result.exit_code == 1
    assert "unhealthy: crm paused, erp failing" in result.output
    assert CliRunner().invoke(main, ["status"]).exit_code == 0  # without --check: a report


@pytest.mark.parametrize(
    "args",
    [
        ["dead", "purge", "--older-than", "30d", "--all"],
        ["dead", "requeue", "--all"],
        ["watermark", "reset", "crm"],
    ],
    ids=["purge", "requeue_all", "watermark_reset"],
)
def test_destructive_commands_refuse_without_a_terminal(env: str, args: list[str]) -> None:
    """Without a terminal and without --yes a destructive command changes nothing, one line."""
    integrations.set_watermark(env, "crm", None)
    result = CliRunner().invoke(main, args, input="y\n")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "add --yes to confirm" in result.output
    assert result.output.count("\n") == 1
    assert CliRunner().invoke(main, [*args, "--yes"]).exit_code == 0


def run_on_terminal(args: list[str], answer: bytes, environ: dict[str, str]) -> tuple[int, str]:
    """Run `ihub ARGS` with a pseudo-terminal as stdin/stdout, answer the prompt."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "ihub", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=environ,
        cwd=REPO,
    )
    os.close(follower)
    seen, deadline = b"", time.monotonic() + 60
    while b"[y/N]" not in seen:
        assert time.monotonic() < deadline, f"no prompt within 60 s: {seen!r}"
        if select.select([leader], [], [], 1)[0]:
            seen += os.read(leader, 1024)
    os.write(leader, answer)
    code = process.wait(timeout=60)
    while select.select([leader], [], [], 0.2)[0]:
        try:
            chunk = os.read(leader, 1024)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    return code, seen.decode(errors="replace")


def test_purge_asks_on_a_terminal(env: str) -> None:
    """On a terminal `dead purge` asks; "n" cancels (exit 1), "y" purges (exit 0)."""
    environ = {**os.environ}
    args = ["dead", "purge", "--older-than", "30d", "--all"]
    code, text = run_on_terminal(args, b"n\n", environ)
    assert code == 1 and "delete the selected dead letters older than 30d?" in text, text
    assert "error: cancelled" in text
    code, text = run_on_terminal(args, b"y\n", environ)
    assert code == 0 and "purged 0 dead letter(s)" in text, text


def test_unknown_integration_is_one_line(env: str) -> None:
    """An unknown name is a one-line error with the known names, not a traceback."""
    result = CliRunner().invoke(main, ["sync", "nope"])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert "no integration named 'nope' (known: crm)" in result.output


def test_unreachable_database_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A database that refuses connections is named (password masked) in one line, exit 2."""
    monkeypatch.setenv("IHUB_DATABASE_URL", "postgresql://ihub:pw-123@127.0.0.1:1/ihub")
    for args in (["status"], ["db", "upgrade"], ["dead", "list"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: the database at postgresql://ihub:***@127.0.0.1")
        assert result.output.count("\n") == 1 and "pw-123" not in result.output


def test_unreachable_broker_is_one_line(env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A requeue whose broker does not answer says so in one line instead of a traceback."""
    from models.db import session_scope
    from models.queue import stage_dead

    with session_scope(env) as session:
        stage_dead(session, "crm", None, "r1", {"id": "r1"}, "unparsable")
    monkeypatch.setenv("IHUB_BROKER_URL", "redis://127.0.0.1:1/0")
    import tasks.app

    monkeypatch.setattr(tasks.app, "_app", None)  # built again with this broker
    result = CliRunner().invoke(main, ["dead", "requeue", "--all", "--yes", "--rate", "0"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: the broker did not answer")
    assert result.output.count("\n") == 1
