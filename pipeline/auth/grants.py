"""Token requests through requests-oauthlib, with the HTTP status checked before parsing.

requests-oauthlib reports a 502 page from the token endpoint as "Missing access token"
(PITFALLS 35); the compliance hook below turns the status into ihub's own error classes first.

oauthlib refuses a plain ``http://`` token URL unless ``OAUTHLIB_INSECURE_TRANSPORT`` is set,
and that switch is process-wide: once set for the demo's loopback IdP, any later ``http://``
token URL would send client secrets in clear. Instead, plain HTTP is allowed per request, to a
loopback token URL only (``_loopback_http``); a non-loopback one is refused before any byte
is sent, whatever the environment says.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import requests
import requests_oauthlib.oauth2_session as oauth2_session
from oauthlib.oauth2 import (
    BackendApplicationClient,
    LegacyApplicationClient,
    OAuth2Error,
    WebApplicationClient,
)
from requests.auth import HTTPBasicAuth
from requests_oauthlib import OAuth2Session

from pipeline.config_auth import OAuth2Config
from pipeline.errors import PermanentError, ReauthRequired, TransientError, parse_retry_after
from pipeline.loopback import is_loopback

REFUSALS = {"invalid_grant", "invalid_client", "unauthorized_client", "access_denied"}


def request_token(
    config: OAuth2Config, *, integration: str, refresh_token: str | None
) -> dict[str, Any]:
    """One grant: refresh when a refresh token is at hand (not for client_credentials)."""
    with (
        _loopback_http(config.token_url, integration),
        OAuth2Session(client=_client(config)) as session,
    ):
        return _request(session, config, integration, refresh_token)


def _request(
    session: OAuth2Session, config: OAuth2Config, integration: str, refresh_token: str | None
) -> dict[str, Any]:
    session.register_compliance_hook("access_token_response", _check_status(integration))
    session.register_compliance_hook("refresh_token_response", _check_status(integration))
    secret = config.client_secret.get_secret_value() if config.client_secret else ""
    basic = HTTPBasicAuth(config.client_id, secret) if config.client_auth == "basic" else None
    try:
        if refresh_token and config.grant_type != "client_credentials":
            body = {} if basic else {"client_id": config.client_id, "client_secret": secret}
            token = session.refresh_token(
                config.token_url,
                refresh_token=refresh_token,
                auth=basic,
                timeout=config.timeout,
                **body,
                **config.extra_params,
            )
        else:
            token = session.fetch_token(
                config.token_url,
                auth=basic,
                timeout=config.timeout,
                scope=_scope(config),
                include_client_id=basic is None,
                client_secret=None if basic else secret,
                **_grant_fields(config),
                **config.extra_params,
            )
    except requests.RequestException as exc:
        raise TransientError(
            f"{integration}: token endpoint unreachable: {type(exc).__name__}"
        ) from None
    except OAuth2Error as exc:
        raise _from_oauth_error(integration, exc) from None
    if not token.get("access_token"):
        raise TransientError(f"{integration}: token endpoint answered without an access_token")
    return dict(token)


def _client(config: OAuth2Config) -> Any:
    if config.grant_type == "client_credentials":
        return BackendApplicationClient(client_id=config.client_id)
    if config.grant_type == "password":
        return LegacyApplicationClient(client_id=config.client_id)
    return WebApplicationClient(client_id=config.client_id)


def _grant_fields(config: OAuth2Config) -> dict[str, str]:
    if config.grant_type == "password" and config.username and config.password:
        return {"username": config.username, "password": config.password.get_secret_value()}
    return {}


def _scope(config: OAuth2Config) -> list[str] | None:
    return config.scope.split() if config.scope else None


def _check_status(integration: str) -> Any:
    def hook(response: requests.Response) -> requests.Response:
        status = response.status_code
        if status in (408, 425, 429) or status >= 500:
            raise TransientError(
                f"{integration}: token endpoint answered HTTP {status}",
                parse_retry_after(response.headers.get("Retry-After")),
            )
        if 400 <= status < 500 and not _is_oauth_error(response):
            raise ReauthRequired(integration, f"token endpoint answered HTTP {status}")
        return response

    return hook


def _is_oauth_error(response: requests.Response) -> bool:
    try:
        return "error" in response.json()
    except ValueError:
        return False


def _from_oauth_error(integration: str, exc: OAuth2Error) -> Exception:
    reason = exc.error + (f": {exc.description}" if exc.description else "")
    if exc.error in REFUSALS or exc.status_code in (400, 401, 403):
        return ReauthRequired(integration, reason)
    if exc.status_code and exc.status_code >= 500:
        return TransientError(f"{integration}: token endpoint error: {reason}")
    return PermanentError(f"{integration}: token endpoint error: {reason}")


_PLAIN_HTTP_ALLOWED: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "ihub_plain_http_token_url", default=None
)


@contextlib.contextmanager
def _loopback_http(token_url: str, integration: str) -> Iterator[None]:
    """Within this block (this thread or task only), oauthlib accepts ``token_url`` over plain
    http when it is a loopback URL; a non-loopback ``http://`` token URL is refused."""
    parts = urlsplit(token_url)
    if parts.scheme.lower() != "http":
        yield
        return
    if not is_loopback(parts.hostname or ""):
        raise PermanentError(
            f"{integration}: refusing the token URL on host {parts.hostname!r}: plain http:// "
            "would send the client secret in clear (use https://; http is for loopback only)"
        )
    _install_transport_check()
    mark = _PLAIN_HTTP_ALLOWED.set(token_url)
    try:
        yield
    finally:
        _PLAIN_HTTP_ALLOWED.reset(mark)


def _secure_or_allowed_loopback(uri: str) -> bool:
    """requests-oauthlib's transport check, without the process-wide environment switch."""
    if uri.lower().startswith("https://"):
        return True
    allowed = _PLAIN_HTTP_ALLOWED.get()
    return allowed is not None and uri == allowed and is_loopback(urlsplit(uri).hostname or "")


def _install_transport_check() -> None:
    """requests-oauthlib checks the token URL with a module-level function: ours replaces it
    (idempotent). It ignores ``OAUTHLIB_INSECURE_TRANSPORT``, so no setting can reopen http."""
    oauth2_session.is_secure_transport = _secure_or_allowed_loopback


def expires_at_from(token: dict[str, Any], *, now: float, default_expires_in: float) -> float:
    """Expiry by the local clock at receipt; string, integer or missing ``expires_in``."""
    raw = token.get("expires_in")
    try:
        seconds = float(raw) if raw not in (None, "") else default_expires_in
    except (TypeError, ValueError):
        seconds = default_expires_in
    return now + max(0.0, seconds)
