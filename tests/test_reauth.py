"""A refused credential pauses fetching; a new refresh token in the config resumes it."""

from __future__ import annotations

from pathlib import Path

from ihub.demo.source import DemoSource, DemoSourceOptions
from models import integrations
from pipeline import sync
from pipeline.config import load_config
from pipeline.hub import Hub
from pipeline.settings import settings_from_env
from tests.workers import write_config


def hub_for(tmp_path: Path, url: str, source: DemoSource, refresh_token: str) -> Hub:
    auth = {
        "type": "oauth2",
        "grant_type": "refresh_token",
        "token_url": source.token_url,
        "client_id": "demo-client",
        "client_secret": source.options.client_secret,
        "refresh_token": refresh_token,
    }
    path = write_config(
        tmp_path / "c.yaml",
        source.url,
        source.options.client_secret,
        source={**_source(source), "auth": auth},
    )
    settings = settings_from_env(
        {"IHUB_DATABASE_URL": url, "IHUB_SECRET_KEY": "test-key-0123456789-abcdefghijklmnopqrstuv"}
    )
    return Hub(settings, load_config(path))


def _source(source: DemoSource) -> dict[str, object]:
    return {
        "url": source.records_url,
        "records": "data",
        "pagination": {"type": "cursor", "limit": 50},
    }


def test_revoked_source_pauses_and_a_new_configured_token_resumes(
    tmp_path: Path, sqlite_url: str
) -> None:
    """invalid_grant pauses the integration with the reason; fetches stay paused (no token
    requests); a new refresh token in the config is tried and the integration resumes."""
    source = DemoSource(DemoSourceOptions(initial_refresh_token="first-seed-token")).start()
    try:
        source.seed(30)
        published: list[int] = []
        hub = hub_for(tmp_path, sqlite_url, source, "first-seed-token")
        assert sync.fetch_delta(hub, "incidents", published.extend, owner="t").staged == 30
        source.revoke_refresh_tokens()
        source.insert()
        hub = hub_for(tmp_path, sqlite_url, source, "first-seed-token")  # a new process
        assert sync.fetch_delta(hub, "incidents", published.extend, owner="t").status == "paused"
        state = integrations.load(sqlite_url, "incidents")
        assert state.status == "reauth_required" and "invalid_grant" in state.status_reason
        requests_before = source.counters["token_requests"]
        assert sync.fetch_delta(hub, "incidents", published.extend, owner="t").status == "paused"
        assert source.counters["token_requests"] == requests_before

        fresh = source.set_refresh_token()
        hub = hub_for(tmp_path, sqlite_url, source, fresh)
        result = sync.fetch_delta(hub, "incidents", published.extend, owner="t")
        assert result.status == "ok" and result.staged >= 1
        assert not integrations.is_paused(sqlite_url, "incidents")
        assert source.counters["invalid_grant"] == 1
    finally:
        source.stop()
