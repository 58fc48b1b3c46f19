"""OAuth 2.0 token handling against the real demo token endpoint and API on 127.0.0.1.

No mocks of requests: every grant and API call is real HTTP. Time moves through a fake clock
given to TokenManager, so nothing here sleeps waiting for a token to expire; the only real
waits are the manager's short transient backoff, one 0.4 s server-side expiry, and the ~6 s
multi-process loop.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pydantic import SecretStr
from sqlalchemy import text

from ihub.demo.source import DemoSource, DemoSourceOptions
from models.db import get_engine
from models.redaction import RedactingFilter, install_redaction
from models.tokens import TokenStore
from pipeline.auth.crypto import TokenCipher
from pipeline.auth.grants import request_token
from pipeline.auth.manager import TRANSIENT_TRIES, TokenManager
from pipeline.auth.requests_auth import OAuth2Auth
from pipeline.config_auth import OAuth2Config
from pipeline.errors import ConfigError, ReauthRequired, TransientError
from pipeline.settings import settings_from_env

KEY = "test-key-0123456789-abcdefghijklmnopqrstuv"
NAME = "incidents"
CRED = f"{NAME}:source"
SEED = "seed-refresh-token-0123456789"
TIMEOUT = 5
ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("auth_worker.py")
Factory = Callable[..., DemoSource]


class Clock:
    """A clock the test moves by hand; starts at the real time so server and client agree."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def make_source() -> Iterator[Factory]:
    started: list[DemoSource] = []

    def make(**options: Any) -> DemoSource:
        source = DemoSource(DemoSourceOptions(**options)).start()
        started.append(source)
        return source

    yield make
    for source in started:
        source.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def oauth(source: DemoSource, **overrides: Any) -> OAuth2Config:
    fields: dict[str, Any] = {
        "token_url": source.token_url,
        "client_id": source.options.client_id,
        "client_secret": SecretStr(source.options.client_secret),
        "grant_type": "client_credentials",
        "client_auth": "basic",
        "refresh_margin": 60.0,
        "default_expires_in": 3600.0,
        "timeout": TIMEOUT,
    }
    fields.update(overrides)
    return OAuth2Config(**fields)


def seeded(source: DemoSource, **overrides: Any) -> OAuth2Config:
    """A refresh_token credential bootstrapped from the config's refresh token."""
    return oauth(source, grant_type="refresh_token", refresh_token=SecretStr(SEED), **overrides)


def make_manager(
    url: str, config: OAuth2Config, clock: Callable[[], float] = time.time, key: str = KEY
) -> TokenManager:
    return TokenManager(NAME, config, TokenStore(url, CRED, TokenCipher(key)), clock=clock)


def api_session(manager: TokenManager) -> requests.Session:
    session = requests.Session()
    session.auth = OAuth2Auth(manager)
    return session


def get(session: requests.Session, source: DemoSource) -> requests.Response:
    return session.get(source.records_url, params={"limit": 1}, timeout=TIMEOUT)


def token_row(url: str) -> dict[str, Any]:
    """The raw ihub_tokens row, as the database holds it."""
    with get_engine(url).connect() as connection:
        query = text("SELECT * FROM ihub_tokens WHERE credential = :c")
        return dict(connection.execute(query, {"c": CRED}).mappings().one())


# 1. client_credentials --------------------------------------------------------------------


def test_client_credentials_fetches_once_and_reuses(make_source: Factory, sqlite_url: str) -> None:
    """One client_credentials grant serves every later call, in this worker and another one."""
    source = make_source()
    manager = make_manager(sqlite_url, oauth(source))
    first = manager.access_token()
    assert manager.access_token() == first
    assert make_manager(sqlite_url, oauth(source)).access_token() == first  # another worker
    assert get(api_session(manager), source).status_code == 200
    assert source.counters["client_credentials_grants"] == 1
    assert source.counters["refresh_grants"] == 0  # never a refresh grant (PITFALLS 34)


def test_token_inside_refresh_margin_is_refreshed_before_use(
    make_source: Factory, sqlite_url: str, clock: Clock
) -> None:
    """A token within refresh_margin of expiry is replaced before it is sent, not after a 401."""
    source = make_source(token_lifetime=300)
    manager = make_manager(sqlite_url, oauth(source, refresh_margin=60), clock)
    first = manager.access_token()
    clock.advance(239)  # 61 s left: still outside the margin
    assert manager.access_token() == first
    assert source.counters["client_credentials_grants"] == 1
    clock.advance(2)  # 59 s left: inside the margin
    second = manager.access_token()
    assert second != first
    assert source.counters["client_credentials_grants"] == 2
    assert get(api_session(manager), source).status_code == 200
    assert source.counters["api_401"] == 0


@pytest.mark.parametrize(("style", "lifetime"), [("int", 300), ("str", 300), ("missing", 1234)])
def test_expires_in_int_str_missing(
    make_source: Factory, sqlite_url: str, clock: Clock, style: str, lifetime: float
) -> None:
    """expires_in as int, str or absent (-> default_expires_in); a 401 refreshes exactly once."""
    source = make_source(token_lifetime=300, expires_in_style=style)
    manager = make_manager(sqlite_url, oauth(source, default_expires_in=1234), clock)
    manager.access_token()
    row = token_row(sqlite_url)
    assert row["expires_at"] - row["issued_at"] == pytest.approx(lifetime)
    source.revoke_refresh_tokens()  # the server forgets the access token; the client cannot know
    response = get(api_session(manager), source)
    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [401]
    assert source.counters["client_credentials_grants"] == 2
    assert source.counters["api_401"] == 1


# 2. client authentication styles ----------------------------------------------------------


@pytest.mark.parametrize("grant", ["client_credentials", "refresh_token"])
@pytest.mark.parametrize(
    ("server", "client", "accepted"),
    [
        ("basic", "basic", True),
        ("basic", "body", False),
        ("body", "body", True),
        ("body", "basic", False),
    ],
)
def test_client_auth_styles(
    make_source: Factory, sqlite_url: str, grant: str, server: str, client: str, accepted: bool
) -> None:
    """Basic and form-body client auth each work where required; the other is invalid_client."""
    source = make_source(client_auth=server, initial_refresh_token=SEED)
    config = (
        seeded(source, client_auth=client)
        if grant == "refresh_token"
        else oauth(source, client_auth=client)
    )
    manager = make_manager(sqlite_url, config)
    if accepted:
        manager.access_token()
        assert get(api_session(manager), source).status_code == 200
        assert source.counters["invalid_client"] == 0
    else:
        with pytest.raises(ReauthRequired) as caught:
            manager.access_token()
        assert "invalid_client" in caught.value.reason
        assert source.counters["invalid_client"] == 1
        assert source.counters["token_requests"] == 1  # refused, so not retried


# 3. refresh_token grant with rotation, and secrets in logs --------------------------------


@pytest.fixture
def redacted_caplog(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog at DEBUG for every logger (oauthlib included) with ihub's redaction installed."""
    names = ["", "requests_oauthlib", "oauthlib", "urllib3", "pipeline", "models", "ihub"]
    levels = {name: logging.getLogger(name).level for name in names}
    holder = logging.Logger("caplog-holder")  # install_redaction works on a logger's handlers
    holder.addHandler(caplog.handler)
    install_redaction(holder)
    assert any(isinstance(f, RedactingFilter) for f in caplog.handler.filters)
    for name in names:  # after install_redaction, which quiets oauthlib: loudest possible
        caplog.set_level(logging.DEBUG, logger=name or None)
    try:
        yield caplog
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for f in [f for f in caplog.handler.filters if isinstance(f, RedactingFilter)]:
            caplog.handler.removeFilter(f)


def assert_no_secret(log_text: str, secrets: set[str]) -> None:
    leaked = [s for s in secrets if s and s in log_text]
    if leaked:  # never echo the values themselves into the report
        pytest.fail(f"{len(leaked)} secret value(s) found in the captured log")


def test_refresh_token_rotation_never_resends_old_token(
    make_source: Factory,
    sqlite_url: str,
    clock: Clock,
    redacted_caplog: pytest.LogCaptureFixture,
) -> None:
    """Each rotated refresh token replaces the old one (never resent) and no secret is logged."""
    source = make_source(initial_refresh_token=SEED, token_lifetime=300)
    config = seeded(source)
    manager = make_manager(sqlite_url, config, clock)
    access: set[str] = set()
    refresh: list[str] = [SEED]
    for _ in range(12):
        access.add(manager.access_token())
        stored = manager.store.load()
        assert stored is not None and stored.refresh_token is not None
        assert stored.refresh_token not in refresh  # rotated and stored
        refresh.append(stored.refresh_token)
        clock.advance(300)
    # A restarted worker with the same config must not go back to the (spent) seed.
    restarted = make_manager(sqlite_url, config, clock)
    access.add(restarted.access_token())
    response = get(api_session(restarted), source)
    assert response.status_code == 200
    assert len(access) == 13
    assert source.counters["refresh_grants"] == 13
    assert source.counters["invalid_grant"] == 0
    log_text = redacted_caplog.text
    assert "Prepared refresh token request body" in log_text  # oauthlib's DEBUG was captured
    assert "token refreshed" in log_text
    basic = base64.b64encode(f"{config.client_id}:{source.options.client_secret}".encode())
    assert_no_secret(log_text, {source.options.client_secret, basic.decode(), *access, *refresh})


def test_client_and_password_grants_log_no_secret(
    make_source: Factory, sqlite_url: str, redacted_caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG, fetch_token's request headers/body and response never show a secret."""
    source = make_source()
    secrets = {source.options.client_secret, source.options.password}
    basic = base64.b64encode(f"{source.options.client_id}:{source.options.client_secret}".encode())
    secrets.add(basic.decode())
    for style in ("basic", "body"):
        for grant in ("client_credentials", "password"):
            config = oauth(
                source,
                grant_type=grant,
                client_auth=style,
                username=source.options.username,
                password=SecretStr(source.options.password),
            )
            manager = TokenManager(
                NAME, config, TokenStore(sqlite_url, f"{grant}-{style}", TokenCipher(KEY))
            )
            secrets.add(manager.access_token())
            stored = manager.store.load()
            assert stored is not None
            secrets.add(stored.refresh_token or "")
    assert "Request body was" in redacted_caplog.text
    assert_no_secret(redacted_caplog.text, secrets)


# 4. password grant ------------------------------------------------------------------------


def test_password_grant_then_refresh(make_source: Factory, sqlite_url: str, clock: Clock) -> None:
    """The password grant gets a token; on expiry its refresh token is used, not the password."""
    source = make_source(token_lifetime=300)
    opts = source.options
    config = oauth(
        source, grant_type="password", username=opts.username, password=SecretStr(opts.password)
    )
    manager = make_manager(sqlite_url, config, clock)
    assert get(api_session(manager), source).status_code == 200
    assert source.counters["password_grants"] == 1
    clock.advance(300)
    assert get(api_session(manager), source).status_code == 200
    assert source.counters["password_grants"] == 1
    assert source.counters["refresh_grants"] == 1
    assert source.counters["invalid_grant"] == 0


def test_password_grant_wrong_password(make_source: Factory, sqlite_url: str) -> None:
    """Wrong resource-owner credentials are ReauthRequired(invalid_grant), not retried."""
    source = make_source()
    config = oauth(
        source, grant_type="password", username="demo-user", password=SecretStr("wrong-pass")
    )
    with pytest.raises(ReauthRequired, match="invalid_grant"):
        make_manager(sqlite_url, config).access_token()
    assert source.counters["token_requests"] == 1


# 5. a 401 from the API: one refresh, one replay -------------------------------------------


@pytest.mark.parametrize("grant", ["client_credentials", "refresh_token"])
def test_401_after_server_side_expiry_refreshes_and_replays_once(
    make_source: Factory, sqlite_url: str, clock: Clock, grant: str
) -> None:
    """A token the server expired early is refreshed on its 401 and the request replayed."""
    source = make_source(token_lifetime=0.3, initial_refresh_token=SEED)  # expires_in says 1 s
    config = seeded(source) if grant == "refresh_token" else oauth(source)
    manager = make_manager(sqlite_url, config, clock)  # client time stands still
    session = api_session(manager)
    assert get(session, source).status_code == 200
    time.sleep(0.4)
    response = get(session, source)
    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [401]
    grants = source.counters["client_credentials_grants"] + source.counters["refresh_grants"]
    assert grants == 2
    assert source.counters["api_401"] == 1
    assert source.counters["invalid_grant"] == 0


def test_persistent_401_is_returned_after_one_replay(make_source: Factory, sqlite_url: str) -> None:
    """An API that keeps answering 401 gets one refresh and one replay, then the 401 back."""
    source = make_source()
    manager = make_manager(sqlite_url, oauth(source))
    manager.access_token()
    session = api_session(manager)
    source.fail_next("/api/records", 401, count=10)
    response = get(session, source)
    assert response.status_code == 401
    assert len(response.history) == 1
    assert source.counters["api_requests"] == 2  # the original and exactly one replay
    assert source.counters["client_credentials_grants"] == 2  # exactly one forced refresh


# 6. token endpoint failures: transient, classified before parsing --------------------------


@pytest.mark.parametrize("grant", ["client_credentials", "refresh_token"])
def test_token_endpoint_502_html_is_transient(make_source: Factory, grant: str) -> None:
    """A 502 HTML page is TransientError naming the status, not 'missing access token'."""
    source = make_source(initial_refresh_token=SEED)
    config = seeded(source) if grant == "refresh_token" else oauth(source)
    source.fail_next("/oauth/token", 502)
    with pytest.raises(TransientError) as caught:
        request_token(config, integration=NAME, refresh_token=SEED)
    assert "HTTP 502" in caught.value.message
    assert "missing" not in caught.value.message.lower()


def test_one_502_is_retried_inside_the_manager(make_source: Factory, sqlite_url: str) -> None:
    """A single 502 from the token endpoint is absorbed by the manager's own retry."""
    source = make_source()
    manager = make_manager(sqlite_url, oauth(source))
    source.fail_next("/oauth/token", 502)
    assert get(api_session(manager), source).status_code == 200
    assert source.counters["token_requests"] == 2
    assert source.counters["client_credentials_grants"] == 1
    assert token_row(sqlite_url)["last_error"] is None  # cleared by the success


def test_consecutive_502s_raise_transient_and_are_recorded(
    make_source: Factory, db_url: str
) -> None:
    """TRANSIENT_TRIES 502s in a row raise TransientError, and the row records the failures."""
    source = make_source()
    manager = make_manager(db_url, oauth(source))
    source.fail_next("/oauth/token", 502, count=TRANSIENT_TRIES)
    with pytest.raises(TransientError, match="HTTP 502"):
        manager.access_token()
    assert source.counters["token_requests"] == TRANSIENT_TRIES
    row = token_row(db_url)
    assert row["failure_count"] == TRANSIENT_TRIES
    assert "HTTP 502" in row["last_error"]
    assert row["access_token"] is None
    manager.access_token()  # the endpoint is back: the next call succeeds
    assert source.counters["client_credentials_grants"] == 1


def test_429_with_retry_after_is_transient(make_source: Factory, sqlite_url: str) -> None:
    """A 429 is TransientError carrying Retry-After; the manager waits that long and retries."""
    source = make_source()
    config = oauth(source)
    source.fail_next("/oauth/token", 429, retry_after="7", body="slow down")
    with pytest.raises(TransientError) as caught:
        request_token(config, integration=NAME, refresh_token=None)
    assert caught.value.retry_after == 7.0
    assert "HTTP 429" in caught.value.message
    source.fail_next("/oauth/token", 429, retry_after="0", body="slow down")
    assert make_manager(sqlite_url, config).access_token()
    assert source.counters["token_requests"] == 3


# 7. revoked refresh token -----------------------------------------------------------------


def test_revoked_refresh_token_is_reauth_required_and_recorded(
    make_source: Factory, db_url: str, clock: Clock
) -> None:
    """A revoked grant is ReauthRequired(invalid_grant) and the row keeps the provider's reason."""
    source = make_source(initial_refresh_token=SEED)
    manager = make_manager(db_url, seeded(source), clock)
    manager.access_token()
    source.revoke_refresh_tokens()
    clock.advance(3600)
    with pytest.raises(ReauthRequired) as caught:
        manager.access_token()
    assert "invalid_grant" in caught.value.reason
    assert "revoked" in caught.value.reason  # the provider's own description
    row = token_row(db_url)
    assert row["failure_count"] == 1
    assert "invalid_grant" in row["last_error"]
    assert row["refresh_count"] == 1
    assert source.counters["invalid_grant"] == 1
    assert source.counters["token_requests"] == 2  # refused: never retried


def test_revocation_seen_as_401_ends_in_reauth_required(
    make_source: Factory, sqlite_url: str
) -> None:
    """After revocation an API call's 401 leads to one refresh attempt and ReauthRequired."""
    source = make_source(initial_refresh_token=SEED)
    session = api_session(make_manager(sqlite_url, seeded(source)))
    assert get(session, source).status_code == 200
    source.revoke_refresh_tokens()
    with pytest.raises(ReauthRequired, match="invalid_grant"):
        get(session, source)
    assert source.counters["api_requests"] == 2
    assert source.counters["invalid_grant"] == 1
    # Re-consent: an operator stores a new refresh token as the config seed.
    consent = SecretStr(source.set_refresh_token())
    renewed = oauth(source, grant_type="refresh_token", refresh_token=consent)
    assert get(api_session(make_manager(sqlite_url, renewed)), source).status_code == 200


# 8. encryption at rest --------------------------------------------------------------------


def test_tokens_are_encrypted_at_rest(make_source: Factory, db_url: str) -> None:
    """The raw row holds neither the access nor the refresh token; a wrong key is ConfigError."""
    source = make_source(initial_refresh_token=SEED)
    manager = make_manager(db_url, seeded(source))
    access = manager.access_token()
    stored = manager.store.load()
    assert stored is not None and stored.refresh_token
    raw = repr(token_row(db_url))
    assert access not in raw
    assert stored.refresh_token not in raw
    assert SEED not in raw
    with pytest.raises(ConfigError, match="IHUB_SECRET_KEY differs"):
        make_manager(
            db_url, seeded(source), key="another-key-0123456789-abcdefghijklmnopq"
        ).access_token()


@pytest.mark.parametrize("key", [None, ""])
def test_missing_secret_key_is_config_error(key: str | None) -> None:
    """No IHUB_SECRET_KEY is a ConfigError that names the variable."""
    with pytest.raises(ConfigError, match="IHUB_SECRET_KEY"):
        TokenCipher(key)
    with pytest.raises(ConfigError, match="IHUB_SECRET_KEY is not set"):
        TokenCipher(settings_from_env({}).secret_key)


# 9-10. single flight across processes -----------------------------------------------------


def run_workers(count: int, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Start `count` worker processes, release them together, return what each reported."""
    argv = [sys.executable, str(WORKER), json.dumps(spec)]
    procs = [
        subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                _, err = proc.communicate(timeout=10)
                pytest.fail(f"worker failed to start: {err[-2000:]}")
        for proc in procs:  # the start barrier
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err[-2000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def worker_spec(source: DemoSource, url: str, mode: str, **extra: Any) -> dict[str, Any]:
    return {
        "db_url": url,
        "token_url": source.token_url,
        "records_url": source.records_url,
        "client_id": source.options.client_id,
        "client_secret": source.options.client_secret,
        "grant_type": "refresh_token",
        "seed": SEED,
        "margin": 60.0,
        "credential": CRED,
        "key": KEY,
        "mode": mode,
        **extra,
    }


def single_flight(source: DemoSource, url: str, processes: int, state: str) -> None:
    if state == "expired":  # stored by a worker whose clock ran 1000 s behind: expired now
        make_manager(url, seeded(source), lambda: time.time() - 1000).access_token()
        row = token_row(url)
        assert row["expires_at"] < time.time()
    before = dict(source.counters)
    results = run_workers(processes, worker_spec(source, url, "once"))
    errors = [r["error"] for r in results if "error" in r]
    assert not errors, errors
    assert source.counters["refresh_grants"] - before["refresh_grants"] == 1
    assert source.counters["invalid_grant"] == 0
    tokens = {r["token"] for r in results}
    assert len(tokens) == 1
    assert [r["status"] for r in results] == [200] * processes
    stored = TokenStore(url, CRED, TokenCipher(KEY)).load()
    assert stored is not None and stored.access_token in tokens


@pytest.mark.parametrize("state", ["expired", "fresh"])
def test_single_flight_postgres_8_processes(make_source: Factory, pg_url: str, state: str) -> None:
    """8 processes on Postgres meeting an expired (or not yet stored) token: exactly 1 grant."""
    single_flight(make_source(initial_refresh_token=SEED), pg_url, 8, state)


@pytest.mark.parametrize("state", ["expired", "fresh"])
def test_single_flight_sqlite_4_processes(
    make_source: Factory, sqlite_url: str, state: str
) -> None:
    """4 processes on SQLite meeting an expired (or not yet stored) token: exactly 1 grant."""
    single_flight(make_source(initial_refresh_token=SEED), sqlite_url, 4, state)


def test_single_flight_loop_postgres(make_source: Factory, pg_url: str) -> None:
    """4 processes calling the API for ~6 s with 1.5 s tokens: no invalid_grant, all 200."""
    lifetime, processes, calls = 1.5, 4, 40
    source = make_source(initial_refresh_token=SEED, token_lifetime=lifetime)
    make_manager(pg_url, seeded(source, refresh_margin=0.5)).access_token()
    before = dict(source.counters)
    spec = worker_spec(source, pg_url, "loop", margin=0.5, calls=calls, interval=0.15)
    results = run_workers(processes, spec)
    errors = [r["error"] for r in results if "error" in r]
    assert not errors, errors
    elapsed = max(r["ended"] for r in results) - min(r["started"] for r in results)
    refreshes = source.counters["refresh_grants"] - before["refresh_grants"]
    statuses = [s for r in results for s in r["statuses"]]
    print(
        f"\nsingle-flight loop: {refreshes} refreshes in {elapsed:.2f} s, {len(statuses)} calls, "
        f"{source.counters['api_401']} API 401s replayed, "
        f"{source.counters['invalid_grant']} invalid_grant"
    )
    assert statuses == [200] * processes * calls
    assert source.counters["invalid_grant"] == 0
    assert 1 <= refreshes <= elapsed / (lifetime * 0.3) + 2
