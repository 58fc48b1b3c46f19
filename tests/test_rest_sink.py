"""The REST sink against the real demo target: versions, errors, and its own OAuth credential."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from ihub.demo.source import DemoSourceOptions
from ihub.demo.target import DemoTarget
from models.tokens import TokenStore
from pipeline.auth.crypto import TokenCipher
from pipeline.auth.manager import TokenManager
from pipeline.auth.requests_auth import OAuth2Auth
from pipeline.config import RestSinkConfig
from pipeline.config_auth import OAuth2Config
from pipeline.errors import PermanentError, ReauthRequired, TransientError
from pipeline.sinks.rest import RestSink


@pytest.fixture
def target():
    demo = DemoTarget(DemoSourceOptions(client_id="t", client_secret="t-secret")).start()
    yield demo
    demo.stop()


@pytest.fixture
def sink(target: DemoTarget, sqlite_url: str) -> RestSink:
    auth = OAuth2Config(
        token_url=target.token_url, client_id="t", client_secret=SecretStr("t-secret")
    )
    store = TokenStore(
        sqlite_url, "x:sink", TokenCipher("test-key-0123456789-abcdefghijklmnopqrstuv")
    )
    config = RestSinkConfig(type="rest", url=target.items_url, method="POST", auth=auth)
    sink = RestSink("x", config, OAuth2Auth(TokenManager("x", auth, store)))
    yield sink
    sink.session.close()


def test_newer_version_is_written_and_older_or_same_is_a_harmless_no_op(sink, target) -> None:
    """A version-aware target keeps the newest: replays and stale versions change nothing."""
    assert sink.upsert({"id": "a/1", "n": 1}, "2026-01-01T00:00:00.000000Z|1") is True
    assert sink.upsert({"id": "a/1", "n": 1}, "2026-01-01T00:00:00.000000Z|1") is False
    assert sink.upsert({"id": "a/1", "n": 0}, "2025-01-01T00:00:00.000000Z|9") is False
    assert sink.upsert({"id": "a/1", "n": 2}, "2026-01-02T00:00:00.000000Z|2") is True
    assert target.items()["a/1"]["n"] == 2
    assert target.counters["item_writes"] == 2 and target.counters["stale_writes"] == 2


def test_server_errors_are_transient_with_retry_after(sink, target) -> None:
    """A 503 with Retry-After is transient and carries the delay."""
    target.fail_next("/api/items/", 503, retry_after="7")
    with pytest.raises(TransientError) as caught:
        sink.upsert({"id": "b"}, "v1")
    assert caught.value.retry_after == 7.0


def test_client_errors_and_missing_keys_are_permanent(sink, target) -> None:
    """A 422 from the target, or a record without its key, is dead-letter material."""
    target.fail_next("/api/items/", 422, body='{"error": "bad field"}')
    with pytest.raises(PermanentError, match="422"):
        sink.upsert({"id": "c"}, "v1")
    with pytest.raises(PermanentError, match="no key field"):
        sink.upsert({"name": "no id"}, "v1")


def test_revoked_credential_surfaces_as_reauth_required(sink, target) -> None:
    """A 401 whose one refresh is refused surfaces as ReauthRequired, not as a retry."""
    assert sink.upsert({"id": "d"}, "v1") is True
    target.revoke_refresh_tokens()
    target.options.client_secret = "rotated-by-the-provider"
    with pytest.raises(ReauthRequired, match="invalid_client"):
        sink.upsert({"id": "d"}, "v2")
