"""The demo source's OAuth 2.0 token endpoint (RFC 6749): client authentication, the
client_credentials, refresh_token and password grants, rotation, revocation and expiry.

It shares the source's lock and counters; ``bearer_ok`` is called with the lock held.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote_plus

from ihub.demo.options import DemoSourceOptions, Response, error


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """Client credentials from a Basic header, form-url-decoded per RFC 6749 2.3.1."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")
    user, _, pw = decoded.partition(":")
    return unquote_plus(user), unquote_plus(pw)


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class TokenEndpoint:
    """Issues and checks tokens; ``on_issue`` callbacks see every payload handed out."""

    def __init__(
        self, options: DemoSourceOptions, counters: dict[str, int], lock: threading.Lock
    ) -> None:
        self.options, self.counters, self._lock = options, counters, lock
        self._access: dict[str, float] = {}  # token -> monotonic expiry
        self._refresh: set[str] = set()
        if options.initial_refresh_token:
            self._refresh.add(options.initial_refresh_token)
        self.on_issue: list[Callable[[dict[str, Any]], None]] = []

    def handle(self, body: bytes, headers: dict[str, str]) -> Response:
        """Answer one token request; ``headers`` keys are lower-case."""
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        with self._lock:
            if not self._client_ok(form, headers.get("authorization")):
                self.counters["invalid_client"] += 1
                return error(
                    401,
                    "invalid_client",
                    "client authentication failed",
                    **{"WWW-Authenticate": 'Basic realm="ihub-demo"'},
                )
            grant = form.get("grant_type")
            if grant == "client_credentials":
                return self._grant_client_credentials(form)
            if grant == "refresh_token":
                return self._grant_refresh(form)
            if grant == "password":
                return self._grant_password(form)
            if not grant:
                return error(400, "invalid_request", "grant_type is required")
            return error(400, "unsupported_grant_type", f"grant_type {grant!r} is not supported")

    def bearer_ok(self, authorization: str | None) -> bool:
        """Whether a ``Bearer`` header carries a live access token (call with the lock held)."""
        if not authorization or not authorization.lower().startswith("bearer "):
            return False
        expiry = self._access.get(authorization[7:].strip())
        return expiry is not None and expiry > time.monotonic()

    def revoke(self) -> None:
        """Simulate a revoked consent: every token issued so far stops working."""
        with self._lock:
            self._refresh.clear()
            self._access.clear()

    def mint_refresh_token(self) -> str:
        """A fresh refresh token, as an operator re-consenting would obtain."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._refresh.add(token)
        return token

    def _client_ok(self, form: dict[str, str], authorization: str | None) -> bool:
        basic = parse_basic(authorization)
        style = self.options.client_auth
        if basic is not None and style in ("basic", "any"):
            creds = basic
        elif basic is None and style in ("body", "any") and "client_secret" in form:
            creds = (form.get("client_id", ""), form["client_secret"])
        else:
            return False
        return same(creds[0], self.options.client_id) and same(creds[1], self.options.client_secret)

    def _issue(self, *, refresh: bool, scope: str | None = None) -> Response:
        now = time.monotonic()
        if len(self._access) > 10_000:
            self._access = {t: exp for t, exp in self._access.items() if exp > now}
        access = secrets.token_urlsafe(32)
        self._access[access] = now + self.options.token_lifetime
        payload: dict[str, Any] = {"access_token": access, "token_type": "Bearer"}
        lifetime = max(1, math.ceil(self.options.token_lifetime))
        if self.options.expires_in_style == "int":
            payload["expires_in"] = lifetime
        elif self.options.expires_in_style == "str":
            payload["expires_in"] = str(lifetime)
        if refresh:
            payload["refresh_token"] = secrets.token_urlsafe(32)
            self._refresh.add(payload["refresh_token"])
        if scope:
            payload["scope"] = scope
        for callback in self.on_issue:
            callback(payload)
        return 200, payload, {}

    def _invalid_grant(self, description: str) -> Response:
        self.counters["invalid_grant"] += 1
        return error(400, "invalid_grant", description)

    def _grant_client_credentials(self, form: dict[str, str]) -> Response:
        self.counters["client_credentials_grants"] += 1
        refresh = self.options.issue_refresh_token_for_client_credentials
        return self._issue(refresh=refresh, scope=form.get("scope"))

    def _grant_refresh(self, form: dict[str, str]) -> Response:
        self.counters["refresh_grants"] += 1
        token = form.get("refresh_token", "")
        if token not in self._refresh:
            return self._invalid_grant("refresh token is invalid, expired, revoked or reused")
        if self.options.rotate_refresh_tokens:
            self._refresh.discard(token)
        return self._issue(refresh=self.options.rotate_refresh_tokens, scope=form.get("scope"))

    def _grant_password(self, form: dict[str, str]) -> Response:
        self.counters["password_grants"] += 1
        user_ok = same(form.get("username", ""), self.options.username)
        if not (same(form.get("password", ""), self.options.password) and user_ok):
            return self._invalid_grant("bad resource owner credentials")
        return self._issue(refresh=True, scope=form.get("scope"))
