"""OAuth 2.0 end to end: a REST target with short-lived, rotating tokens, many real workers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ihub.cli.runner import wait_for_run
from ihub.demo.source import DemoSource, DemoSourceOptions
from ihub.demo.target import DemoTarget
from models import integrations, queue
from pipeline import sync
from pipeline.hub import Hub
from tests.workers import service_env, workers, write_config

pytestmark = [pytest.mark.services, pytest.mark.slow]

SEED = "seed-refresh-token-for-the-target-0123456789"


@pytest.fixture
def source() -> DemoSource:
    demo = DemoSource(DemoSourceOptions(token_lifetime=60, page_size_max=1000)).start()
    yield demo
    demo.stop()


@pytest.fixture
def target() -> DemoTarget:
    options = DemoSourceOptions(
        client_id="target-client",
        client_secret="target-secret-value",
        token_lifetime=2.0,
        rotate_refresh_tokens=True,
        initial_refresh_token=SEED,
    )
    demo = DemoTarget(options).start()
    yield demo
    demo.stop()


@pytest.fixture
def stack(tmp_path: Path, pg_url: str, redis_url: str, source, target, monkeypatch):
    sink = {
        "type": "rest",
        "url": target.items_url,
        "method": "POST",
        "auth": {
            "type": "oauth2",
            "grant_type": "refresh_token",
            "token_url": target.token_url,
            "client_id": "target-client",
            "client_secret": "target-secret-value",
            "client_auth": "basic",
            "refresh_token": SEED,
            "refresh_margin": 0.5,
        },
    }
    config = write_config(
        tmp_path / "integrations.yaml", source.url, source.options.client_secret, sink=sink
    )
    env = service_env(tmp_path, config, pg_url, redis_url)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from tasks import app as app_module

    monkeypatch.setattr(app_module, "_app", None)
    return env, Hub.from_env(), app_module.get_app()


def fetch(hub: Hub, app) -> sync.FetchResult:
    from tasks.records import publish_records

    return sync.fetch_delta(hub, "incidents", lambda ids: publish_records(app, ids), owner="test")


def assert_target_matches(source: DemoSource, target: DemoTarget) -> None:
    arrived = {k: (v["version"], v["updated_at"]) for k, v in target.items().items()}
    expected = {k: (v["version"], v["updated_at"]) for k, v in source.snapshot().items()}
    assert arrived == expected


def test_eight_workers_share_one_rotating_token(stack, source, target, tmp_path: Path) -> None:
    """8 workers (4 processes x 2) write 5,000 records to a target whose tokens live 2 s and
    whose refresh token rotates on every use: all done, no invalid_grant, refreshes close to
    run time / token lifetime, and no secret or token in any log line."""
    source.seed(5000)
    env, hub, app = stack
    logs = tmp_path / "logs"
    logs.mkdir()
    with workers(env, count=4, concurrency=2, log_dir=logs):
        started = time.monotonic()
        run = fetch(hub, app)
        counts = wait_for_run(hub.database_url, run.run_id, timeout=600)
        elapsed = time.monotonic() - started
    assert counts["done"] == 5000 and counts["dead"] == 0
    assert_target_matches(source, target)
    refreshes = target.counters["refresh_grants"]
    print(
        f"\n5000 records, 8 workers, {elapsed:.1f}s, {refreshes} refreshes, "
        f"{target.counters['api_401']} API 401s, {target.counters['invalid_grant']} invalid_grant"
    )
    assert target.counters["invalid_grant"] == 0
    assert 1 <= refreshes <= elapsed / (2.0 * 0.5) + 3  # at most one per ~half lifetime
    secrets_ = [*target.issued, SEED, "target-secret-value", source.options.client_secret]
    text = "\n".join(p.read_text() for p in logs.iterdir())
    assert "process_record" in text  # the logs really hold the run
    leaked = [s for s in secrets_ if s in text]
    assert leaked == []


def test_revoked_target_credential_pauses_then_resumes_with_nothing_lost(
    stack, source, target
) -> None:
    """Revocation mid-run pauses the integration with the provider's reason; no record is
    dead-lettered for it; after `ihub auth set --sink` every record arrives."""
    source.seed(600)
    env, hub, app = stack
    with workers(env, count=2, concurrency=2):
        run = fetch(hub, app)
        _wait(lambda: queue.run_counts(hub.database_url, run.run_id)["done"] >= 100)
        target.revoke_refresh_tokens()
        _wait(lambda: integrations.is_paused(hub.database_url, "incidents"))
        state = integrations.load(hub.database_url, "incidents")
        assert "invalid_grant" in (state.status_reason or "")
        time.sleep(3)  # in-flight tasks drain into the pause
        paused_counts = queue.run_counts(hub.database_url, run.run_id)
        assert paused_counts["dead"] == 0 and paused_counts["done"] < 600

        from ihub.cli import main

        fresh = target.set_refresh_token()
        result = CliRunner().invoke(
            main, ["auth", "set", "incidents", "--sink", "--refresh-token", fresh]
        )
        assert result.exit_code == 0, result.output
        assert fresh not in result.output
        # As beat would: rows handed back in the instant of the resume are republished.
        counts = wait_for_run(
            hub.database_url, run.run_id, timeout=300, progress=lambda _: reconcile(hub, app)
        )
    assert counts["done"] == 600 and counts["dead"] == 0
    assert not integrations.is_paused(hub.database_url, "incidents")
    assert_target_matches(source, target)


def reconcile(hub: Hub, app) -> None:
    from tasks.records import publish_records

    sync.reconcile(hub, lambda ids: publish_records(app, ids))


def _wait(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.2)
