"""What ihub sends to a token endpoint: scope, extra parameters, and client authentication."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest
from pydantic import SecretStr

from pipeline.auth.grants import request_token
from pipeline.config_auth import OAuth2Config


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        form = {k: v[0] for k, v in parse_qs(body).items()}
        self.seen.append({"form": form, "authorization": self.headers.get("Authorization")})
        data = json.dumps({"access_token": "at-123456", "token_type": "Bearer"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def endpoint() -> Iterator[str]:
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/token"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("style", ["basic", "body"])
def test_scope_and_extra_params_reach_the_token_endpoint(endpoint: str, style: str) -> None:
    """Scope, audience/resource parameters and the chosen client authentication are sent."""
    config = OAuth2Config(
        token_url=endpoint,
        client_id="cid",
        client_secret=SecretStr("csecret"),
        client_auth=style,
        scope="read write",
        extra_params={"audience": "https://api.example", "resource": "urn:x"},
    )
    token = request_token(config, integration="t", refresh_token=None)
    assert token["access_token"] == "at-123456"
    [seen] = _Recorder.seen
    form = seen["form"]
    assert form["grant_type"] == "client_credentials" and form["scope"] == "read write"
    assert form["audience"] == "https://api.example" and form["resource"] == "urn:x"
    if style == "basic":
        assert seen["authorization"].startswith("Basic ") and "client_secret" not in form
    else:
        assert seen["authorization"] is None
        assert form["client_id"] == "cid" and form["client_secret"] == "csecret"


def test_client_credentials_never_sends_a_refresh_grant(endpoint: str) -> None:
    """Even with a stored refresh token, client_credentials asks for a new token (PITFALLS 34)."""
    config = OAuth2Config(token_url=endpoint, client_id="c", client_secret=SecretStr("s"))
    request_token(config, integration="t", refresh_token="stale-refresh-token")
    assert _Recorder.seen[0]["form"]["grant_type"] == "client_credentials"
