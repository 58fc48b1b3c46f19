"""Secrets shown in clear: every path an operator or Flower reads, each with a known secret.

``ihub check``, ``ihub dead list``, /api/dead and /dead (``dashboard.dead_letters``), one dead
letter, ``last_run.error``, ``ihub auth status``, the exceptions Celery puts in task-failed and
task-retried events, and connection error texts. Each test plants a unique secret string and
asserts that it never appears.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import yaml
from click.testing import CliRunner
from sqlalchemy import update

from ihub.cli import main
from ihub.report import collect_status, dead_letter
from models import dashboard, integrations, queue, runs
from models.db import session_scope
from models.redaction import MASK
from models.schema import Token
from models.tokens import TokenStore
from pipeline.auth.crypto import TokenCipher
from pipeline.delta import SourceRecord
from pipeline.errors import TransientError, classify_exception
from pipeline.timefmt import utcnow

KEY = "a-test-secret-key-that-is-long-enough-0123456789"


def fresh(label: str) -> str:
    """A secret no earlier test registered (redaction's registry is process-wide)."""
    return f"{label}-{secrets.token_hex(8)}"


def write_config(path: Path, header_secret: str) -> Path:
    config = {
        "integrations": {
            "items": {
                "source": {
                    "url": "https://api.example.com/items",
                    "headers": {"X-Api-Key": header_secret, "X-Plain": "visible-header"},
                },
                "sink": {"table": "items"},
            }
        }
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_check_masks_headers_params_extra_params_env_values_and_url_password(
    tmp_path: Path,
) -> None:
    """`ihub check` shows none of: secret-named headers/params/extra_params, ${VAR} values,
    the password in sink.url; plain values stay readable."""
    planted = {name: fresh(name) for name in ("hdr", "par", "xp", "env", "pg", "cs", "q")}
    config = {
        "integrations": {
            "items": {
                "source": {
                    "url": "https://api.example.com/items?key=${QUERY_KEY}",
                    "headers": {"Authorization": f"Token {planted['hdr']}", "X-Env": "${HDR}"},
                    "params": {"api_token": planted["par"], "limit": "50"},
                    "auth": {
                        "type": "oauth2",
                        "token_url": "https://idp.example.com/token",
                        "client_id": "ihub",
                        "client_secret": "${CLIENT_SECRET}",
                        "extra_params": {"client_assertion": planted["xp"], "aud": "${AUD}"},
                    },
                },
                "sink": {"table": "items", "url": f"postgresql://ihub:{planted['pg']}@db/ihub"},
            }
        }
    }
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {
        "HDR": planted["env"],
        "CLIENT_SECRET": planted["cs"],
        "AUD": "audience-from-env",
        "QUERY_KEY": planted["q"],
    }
    result = CliRunner().invoke(main, ["check", "--config", str(path)], env=env)
    assert result.exit_code == 0, result.output
    for name, value in planted.items():
        assert value not in result.output, f"{name} shown in clear"
    assert "audience-from-env" not in result.output  # any ${VAR} value, secret-named or not
    assert "'50'" in result.output and "https://idp.example.com/token" in result.output
    assert MASK in result.output


def dead_row(url: str, message: str, trace: str | None = None) -> int:
    with session_scope(url) as session:
        [row_id] = queue.stage(
            session, "items", None, [SourceRecord("r1", utcnow(), {"id": "r1"})], due_in=300
        )
    queue.mark_dead(
        url, row_id, error_class="TransientError", message=message, traceback=trace, worker="w"
    )
    return row_id


def leaky_message(header: str, query: str, bearer: str) -> str:
    return (
        f"source items: HTTP 400: echo X-Api-Key={header}; "
        f"GET https://api.example.com/x?page=2&api_key={query}; Authorization: Bearer {bearer}"
    )


def test_dead_list_never_shows_secrets(sqlite_url: str, tmp_path: Path) -> None:
    """`ihub dead list` (text and --json) masks a config header, a query key and a bearer."""
    header, query, bearer = fresh("hdr"), fresh("q"), fresh("bearer")
    dead_row(sqlite_url, leaky_message(header, query, bearer))
    env = {
        "IHUB_DATABASE_URL": sqlite_url,
        "IHUB_CONFIG": str(write_config(tmp_path / "hub.yaml", header)),
        "IHUB_HOME": str(tmp_path),
    }
    for extra in ([], ["--json"]):
        result = CliRunner().invoke(main, ["dead", "list", *extra], env=env)
        assert result.exit_code == 0, result.output
        assert "r1" in result.output
        for value in (header, query, bearer):
            assert value not in result.output


def test_api_dead_and_dead_page_data_never_show_secrets(sqlite_url: str) -> None:
    """/api/dead and /dead read dashboard.dead_letters; /api/dead/<id> reads report.dead_letter:
    neither message nor traceback keeps a query key, a URL password or a bearer."""
    query, password, bearer = fresh("q"), fresh("pw"), fresh("bearer")
    message = leaky_message("h", query, bearer) + f" postgresql://u:{password}@db/x"
    row_id = dead_row(sqlite_url, message, trace=f"Traceback ...\nError: {message}")
    listed = json.dumps(dashboard.dead_letters(sqlite_url, dashboard.DeadFilter()), default=str)
    one = json.dumps(dead_letter(sqlite_url, row_id), default=str)
    for text in (listed, one):
        assert "api_key=" in text
        for value in (query, password, bearer):
            assert value not in text


def test_last_run_error_never_shows_secrets(sqlite_url: str) -> None:
    """last_run.error in the status data masks a query key and a bearer, even stored raw."""
    query, bearer = fresh("q"), fresh("bearer")
    run_id = runs.start(sqlite_url, "items")
    runs.finish(sqlite_url, run_id, status="failed", error=leaky_message("h", query, bearer))
    integrations.mark_fetch(sqlite_url, "items", success=False)
    status = json.dumps(collect_status(sqlite_url, None))
    assert '"status": "failed"' in status
    for value in (query, bearer):
        assert value not in status


def test_fetch_connection_error_stores_no_url_query(sqlite_url: str, tmp_path: Path) -> None:
    """A fetch that cannot connect records its run error without the URL's query or password."""
    from pipeline import sync
    from pipeline.config import parse_config
    from pipeline.hub import Hub
    from pipeline.settings import settings_from_env

    query, password = fresh("q"), fresh("pw")
    source = {"url": f"http://user:{password}@127.0.0.1:9/items", "params": {"sig": query}}
    raw = {"integrations": {"items": {"source": source, "sink": {"table": "items"}}}}
    config = parse_config(raw, file="x", env={})
    settings = settings_from_env({"IHUB_DATABASE_URL": sqlite_url, "IHUB_HOME": str(tmp_path)})
    with pytest.raises(TransientError) as caught:
        sync.fetch_delta(Hub(settings, config), "items", lambda ids: None, owner="t")
    run = runs.latest(sqlite_url, "items")
    assert run is not None and run["status"] == "failed"
    for text in (str(caught.value), run["error"]):
        assert "127.0.0.1" in text
        assert query not in text and password not in text


def test_connection_error_text_keeps_no_query_or_userinfo() -> None:
    """classify_exception on a real refused connection: host kept, query and password gone."""
    token, password = fresh("tok"), fresh("pw")
    try:
        requests.get(f"http://u:{password}@127.0.0.1:9/x?access={token}", timeout=5)
    except requests.RequestException as exc:
        error = classify_exception(exc, what="source items")
    assert "127.0.0.1" in str(error)
    assert token not in str(error) and password not in str(error)


def test_auth_status_never_shows_secrets(sqlite_url: str, tmp_path: Path) -> None:
    """`ihub auth status` (text, --json) masks an echoed client secret and a config header,
    whether the failure was recorded through the store or stored raw before this fix."""
    header, echoed = fresh("hdr"), fresh("cs")
    store = TokenStore(sqlite_url, "items:source", TokenCipher(KEY))
    with store.locked() as locked:
        locked.record_failure(f"invalid_client: client_secret={echoed}")
    raw = f"invalid_client: header {header} refused"
    with session_scope(sqlite_url) as session:
        session.execute(update(Token).values(last_error=raw))
    env = {
        "IHUB_DATABASE_URL": sqlite_url,
        "IHUB_CONFIG": str(write_config(tmp_path / "hub.yaml", header)),
        "IHUB_HOME": str(tmp_path),
    }
    for extra in ([], ["--json"]):
        result = CliRunner().invoke(main, ["auth", "status", *extra], env=env)
        assert result.exit_code == 0, result.output
        assert "items:source" in result.output
        assert header not in result.output and echoed not in result.output


# --- what Celery puts in task-failed / task-retried events (Flower) ----------------------


@pytest.fixture
def celery_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    monkeypatch.setenv("IHUB_HOME", str(tmp_path))
    monkeypatch.setenv("IHUB_BROKER_URL", "redis://127.0.0.1:1/0")  # never connected to
    monkeypatch.setenv("IHUB_CONFIG", str(tmp_path / "missing.yaml"))
    from tasks.app import create_app

    return create_app()


def leak(secret: str) -> Exception:
    try:
        raise KeyError(f"cause carrying {secret}")
    except KeyError as cause:
        try:
            raise requests.ConnectionError(f"with url: /x?token={secret} Bearer {secret}")
        except requests.ConnectionError as exc:
            exc.__cause__ = cause
            return exc


def failing(secret: str) -> Any:
    def run(*_: Any, **__: Any) -> Any:
        raise leak(secret)

    return run


def test_fetch_task_failure_event_carries_no_secret(
    celery_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exception and traceback Celery records for a failed fetch hold no secret."""
    from models.redaction import register_secret
    from pipeline import sync

    secret = fresh("tok")
    register_secret(secret)
    monkeypatch.setattr("tasks.fetch.hub", lambda: None)
    monkeypatch.setattr(sync, "fetch_delta", failing(secret))
    result = celery_app.tasks["ihub.fetch_delta"].apply(args=("items",))
    assert result.failed()
    assert "ConnectionError" in repr(result.result)
    assert secret not in repr(result.result) and secret not in result.traceback


def test_fetch_task_retry_and_final_failure_carry_no_secret(
    celery_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transient fetch error is retried and finally raised without its secret."""
    from pipeline import sync

    secret = fresh("tok")
    policy = SimpleNamespace(retry=SimpleNamespace(backoff=0.0, backoff_max=0.0, max_retries=1))
    engine = SimpleNamespace(integration=lambda name: policy)

    def transient(*_: Any, **__: Any) -> Any:
        raise TransientError(f"source items: GET https://a.example/x?api_key={secret}")

    monkeypatch.setattr("tasks.fetch.hub", lambda: engine)
    monkeypatch.setattr(sync, "fetch_delta", transient)
    result = celery_app.tasks["ihub.fetch_delta"].apply(args=("items",))
    assert result.failed() and isinstance(result.result, TransientError)
    assert secret not in repr(result.result) and secret not in result.traceback


def test_process_task_failure_event_carries_no_secret(
    celery_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error in process_record reaches Celery without the secret it quoted."""
    from pipeline import sync

    secret = fresh("tok")
    monkeypatch.setattr("tasks.records.hub", lambda: None)
    monkeypatch.setattr("tasks.records.dead_letter_spool", lambda app, settings: None)
    monkeypatch.setattr(sync, "process_record", failing(secret))
    result = celery_app.tasks["ihub.process_record"].apply(args=(1,))
    assert result.failed()
    assert secret not in repr(result.result) and secret not in result.traceback


def test_worker_hub_learns_static_header_secrets(tmp_path: Path) -> None:
    """A worker's Hub registers the config's header secrets: its logs and dead letters mask
    them even though no token manager ever saw them."""
    from models.redaction import redact
    from pipeline.config import parse_config
    from pipeline.hub import Hub
    from pipeline.settings import settings_from_env

    header = fresh("hdr")
    source = {"url": "https://api.example.com/items", "headers": {"X-Vendor": "${VENDOR}"}}
    raw = {"integrations": {"items": {"source": source, "sink": {"table": "items"}}}}
    config = parse_config(raw, file="x", env={"VENDOR": header})
    assert header in redact(f"echoed {header}")  # nothing registered it yet
    Hub(settings_from_env({"IHUB_HOME": str(tmp_path)}), config)
    assert redact(f"echoed {header}") == f"echoed {MASK}"


def test_redrive_and_reconcile_failure_events_carry_no_secret(
    celery_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The beat tasks hand Celery the same redacted error as the record tasks."""
    from pipeline import sync

    secret = fresh("tok")
    monkeypatch.setattr("tasks.maintenance.hub", lambda: None)
    monkeypatch.setattr("tasks.maintenance.dead_letter_spool", lambda app, settings: None)
    monkeypatch.setattr("tasks.maintenance.process_queue_depth", lambda app: None)
    monkeypatch.setattr(sync, "redrive", failing(secret))
    monkeypatch.setattr(sync, "reconcile", failing(secret))
    for name, args in (("ihub.redrive", ("items",)), ("ihub.reconcile", ())):
        result = celery_app.tasks[name].apply(args=args)
        assert result.failed(), name
        assert secret not in repr(result.result) and secret not in result.traceback
