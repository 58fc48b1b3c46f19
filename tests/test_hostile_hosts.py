"""Credentials stay with their host: a hostile source on 127.0.0.1 tries to send our bearer
token and static headers to a second local host, 127.0.0.2, which records every request.

Each test is named after the attack; each failed before the fix (the second host received
``Bearer ...``, the static header, or a token request went out over plain http)."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest
import requests
from pydantic import SecretStr

from pipeline.auth import grants
from pipeline.auth.requests_auth import OAuth2Auth
from pipeline.config import SourceConfig, parse_config
from pipeline.config_auth import OAuth2Config
from pipeline.errors import ConfigError, PermanentError
from pipeline.sources.guard import allowed_origins, check_followable
from pipeline.sources.rest import RestSource
from tests.hostile_server import Answer, Local, Seen, json_answer, serve

TOKEN, FRESH, API_KEY = "first-token-abc", "fresh-token-xyz", "static-key-123"
RECORD = {"id": "r1", "updated_at": "2024-05-01T12:00:00Z"}


class FakeTokens:
    """The two calls OAuth2Auth makes of its token manager, counted."""

    def __init__(self) -> None:
        self.invalidated: list[str] = []

    def access_token(self) -> str:
        return TOKEN

    def invalidate(self, rejected: str) -> str:
        self.invalidated.append(rejected)
        return FRESH


def victim_source(url: str, tokens: FakeTokens, **fields: Any) -> RestSource:
    config = SourceConfig.model_validate(
        {"url": url, "headers": {"X-Api-Key": API_KEY}, "delta": {"param": None}, **fields}
    )
    hosts = allowed_origins(config.url, config.allowed_hosts)
    return RestSource("victim", config, OAuth2Auth(tokens, hosts))  # type: ignore[arg-type]


def recorder(seen: Seen, local: Local) -> Answer:
    return json_answer(b'{"data": [], "next": null}', 401)


def leaked(local: Local) -> list[str]:
    """What of ours reached ``local``: any Authorization, and the static header."""
    found = [s.headers.get("authorization", "") for s in local.seen]
    found += [s.headers.get("x-api-key", "") for s in local.seen]
    return [value for value in found if value]


def _pointing_next_at(target: str, style: str) -> Any:
    def respond(seen: Seen, local: Local) -> Answer:
        if style == "link":
            return json_answer(json.dumps([RECORD]).encode(), Link=f'<{target}>; rel="next"')
        return json_answer(json.dumps({"data": [RECORD], "next": target}).encode())

    return respond


@pytest.mark.parametrize(
    ("style", "form"),
    [("next_url", "absolute"), ("next_url", "scheme_relative"), ("link", "absolute")],
)
def test_next_page_url_to_another_host_gets_no_request_and_no_token(style: str, form: str) -> None:
    """A next URL (body or Link header) naming 127.0.0.2 stops the run with an error naming
    that host; the second host receives no request at all, so no token and no static header."""
    tokens = FakeTokens()
    with serve("127.0.0.2", recorder) as thief:
        target = f"{thief.url}/steal" if form == "absolute" else f"//127.0.0.2:{thief.port}/x"
        with serve("127.0.0.1", _pointing_next_at(target, style)) as api:
            records = "data" if style == "next_url" else ""
            pagination = {"type": style, "limit": 1}
            source = victim_source(
                f"{api.url}/items", tokens, records=records, pagination=pagination
            )
            pages = source.pages(None)
            assert len(next(pages).records) == 1
            with pytest.raises(PermanentError, match=re.escape("host '127.0.0.2'")):
                next(pages)
    assert thief.seen == [] and leaked(thief) == []
    assert api.seen[0].headers["authorization"] == f"Bearer {TOKEN}"


def test_next_page_url_to_an_allowed_host_is_followed() -> None:
    """allowed_hosts lets an API page across hosts it names (same scheme)."""

    def second(seen: Seen, local: Local) -> Answer:
        return json_answer(json.dumps({"data": [RECORD], "next": None}).encode())

    with (
        serve("127.0.0.2", second) as other,
        serve("127.0.0.1", _pointing_next_at(f"{other.url}/p2", "next_url")) as api,
    ):
        source = victim_source(
            f"{api.url}/items",
            FakeTokens(),
            records="data",
            pagination={"type": "next_url", "limit": 1},
            allowed_hosts=[f"127.0.0.2:{other.port}"],
        )
        assert len(list(source.pages(None))) == 2
    assert [s.path for s in other.seen] == ["/p2"]


SOURCE = "https://api.example.com/v1/items"


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://elsewhere.example/x", "elsewhere.example"),
        ("http://api.example.com/v1/items?page=2", "api.example.com"),  # downgrade
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("https://api.example.com:8443/v1/items", "api.example.com"),
        ("https://api.example.com.evil.example/x", "api.example.com.evil.example"),
        ("https://api.example.com@evil.example/x", "evil.example"),
        ("https://evil.example\\@api.example.com/x", "api.example.com"),
        ("file:///etc/passwd", "file:///etc/passwd"),
    ],
    ids=["other_host", "http_downgrade", "metadata_ip", "other_port", "suffix_host",
         "userinfo", "backslash", "file_scheme"],
)  # fmt: skip
def test_next_page_url_check_refuses_every_other_origin(url: str, host: str) -> None:
    """Scheme, host and port must all be the source's own; the error names the host."""
    with pytest.raises(PermanentError, match=re.escape(f"host '{host}")):
        check_followable(url, allowed_origins(SOURCE), what="source s")


@pytest.mark.parametrize(
    "url", [SOURCE + "?page=2", "https://API.example.com:443/v1/items?c=2", "https://b.example/x"]
)
def test_next_page_url_check_allows_the_source_and_allowed_hosts(url: str) -> None:
    """The source's own origin (any case, default port written or not) and allowed_hosts pass."""
    check_followable(url, allowed_origins(SOURCE, ["b.example"]), what="source s")


def test_redirect_to_another_host_gets_no_token_no_static_header_and_no_401_replay() -> None:
    """A 302 to 127.0.0.2 that answers 401: requests drops Authorization, and our 401 replay
    must not put a fresh token back; the static header is dropped there too."""
    tokens = FakeTokens()
    with serve("127.0.0.2", recorder) as thief:

        def redirect(seen: Seen, local: Local) -> Answer:
            return 302, {"Location": f"{thief.url}/collect"}, [b""]

        with serve("127.0.0.1", redirect) as api:
            source = victim_source(f"{api.url}/items", tokens, pagination={"type": "none"})
            with pytest.raises(PermanentError, match="HTTP 401"):
                list(source.pages(None))
    assert [s.path for s in thief.seen] == ["/collect"]  # one request, no replay
    assert leaked(thief) == [] and tokens.invalidated == []
    assert api.seen[0].headers["x-api-key"] == API_KEY


def test_the_token_is_never_attached_to_a_request_for_another_host() -> None:
    """Pinned to its hosts, the auth refuses to attach the token elsewhere, whatever code
    sends the request: the second host receives nothing."""
    with serve("127.0.0.2", recorder) as thief:
        session = requests.Session()
        session.auth = OAuth2Auth(FakeTokens(), allowed_origins("http://127.0.0.1:9/x"))  # type: ignore[arg-type]
        with pytest.raises(PermanentError, match=re.escape("host '127.0.0.2'")):
            session.get(f"{thief.url}/x", timeout=10)
    assert thief.seen == []


def test_a_401_from_the_source_itself_is_still_replayed_once() -> None:
    """The replay stays for the host the credential belongs to."""

    def expired_then_ok(seen: Seen, local: Local) -> Answer:
        if seen.headers.get("authorization") == f"Bearer {FRESH}":
            return json_answer(json.dumps([RECORD]).encode())
        return json_answer(b'{"error": "expired"}', 401)

    tokens = FakeTokens()
    with serve("127.0.0.1", expired_then_ok) as api:
        source = victim_source(f"{api.url}/items", tokens, pagination={"type": "none"})
        [page] = list(source.pages(None))
    assert len(page.records) == 1 and tokens.invalidated == [TOKEN]


def token_config(url: str) -> OAuth2Config:
    """Built unchecked: the request-time guard must hold even for a config never validated."""
    return OAuth2Config.model_construct(
        type="oauth2", grant_type="client_credentials", token_url=url, client_id="ihub",
        client_secret=SecretStr("s3cret"), client_auth="basic", scope=None, extra_params={},
        timeout=5.0,
    )  # fmt: skip


def test_a_plain_http_token_url_off_loopback_is_a_config_error() -> None:
    """Caught at load, naming the key, before any worker starts."""
    auth = {"type": "oauth2", "token_url": "http://10.9.8.7/token", "client_id": "c",
            "client_secret": "s"}  # fmt: skip
    raw = {"integrations": {"s": {"source": {"url": "https://x/i", "auth": auth},
                                  "sink": {"table": "t"}}}}  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, file="f.yaml", env={})
    assert any("token_url" in p and "loopback hosts only" in p for p in caught.value.problems)


def test_plain_http_token_url_off_loopback_is_refused_even_after_a_loopback_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A loopback http:// token URL works without the process-wide OAUTHLIB_INSECURE_TRANSPORT;
    a non-loopback http:// one is then refused before any byte is sent, even with the
    variable set by someone else."""
    monkeypatch.delenv("OAUTHLIB_INSECURE_TRANSPORT", raising=False)

    def idp(seen: Seen, local: Local) -> Answer:
        body = {"access_token": "t", "token_type": "Bearer", "expires_in": 3600}
        return json_answer(json.dumps(body).encode())

    with serve("127.0.0.1", idp) as local:
        token = grants.request_token(
            token_config(f"{local.url}/token"), integration="i", refresh_token=None
        )
    assert token["access_token"] == "t"
    assert "OAUTHLIB_INSECURE_TRANSPORT" not in os.environ

    sent: list[str] = []

    def no_traffic_off_loopback(self: Any, request: requests.PreparedRequest, **kw: Any) -> Any:
        sent.append(request.url or "")  # recorded, never sent: this test stays on 127.0.0.0/8
        raise requests.ConnectionError("blocked by the test")

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", no_traffic_off_loopback)
    for insecure in (None, "1"):
        if insecure:
            monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", insecure)
        with pytest.raises(PermanentError, match=re.escape("host '10.9.8.7'")):
            grants.request_token(
                token_config("http://10.9.8.7/token"), integration="i", refresh_token=None
            )
    assert sent == []
