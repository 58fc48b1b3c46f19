"""Every error ihub raises says what to do about it.

    IhubError
     ├── ConfigError        the integration definition is wrong: fix the file, nothing to retry
     ├── TransientError     retry with backoff (connection errors, timeouts, 408, 425, 429, 5xx)
     ├── PermanentError     dead-letter at once (other 4xx, invalid record, mapping failure)
     └── ReauthRequired     the credential was refused: pause the integration, keep its records

All of them pass every constructor argument to ``super().__init__`` so that they survive the
pickle round trip between Celery's pool processes with their real type (PITFALLS 17).
"""

from __future__ import annotations

import email.utils
import time
from urllib.parse import urlsplit, urlunsplit

import requests

from models.redaction import redact, strip_urls

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class IhubError(Exception):
    """Root of every error ihub raises on purpose."""


class ConfigError(IhubError):
    """A configuration problem; ``problems`` lists every one as ``file: key: what was expected``."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message, problems)
        self.message = message
        self.problems = list(problems or [])

    def __str__(self) -> str:
        if not self.problems:
            return self.message
        return self.message + "\n" + "\n".join(f"  {p}" for p in self.problems)


class TransientError(IhubError):
    """Worth retrying; ``retry_after`` (seconds) comes from the remote side when it said so."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after)
        self.message = message
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message


class PermanentError(IhubError):
    """Retrying cannot help: the record goes to the dead letters with this reason."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ReauthRequired(IhubError):
    """The provider refused the credential (invalid_grant, invalid_client, revoked consent)."""

    def __init__(self, integration: str, reason: str) -> None:
        super().__init__(integration, reason)
        self.integration = integration
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.integration}: re-authorisation required: {self.reason}"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    delay = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, delay)


def classify_response(response: requests.Response, *, what: str) -> IhubError | None:
    """The error an HTTP response stands for, or None when it succeeded.

    ``what`` names the request in the message (for example ``source incidents``); the body is
    cut short, and the request's headers (which carry the token) are never quoted.
    """
    status = response.status_code
    if status < 400:
        return None
    snippet = redact((response.text or "")[:200].replace("\n", " "))
    message = f"{what}: HTTP {status} from {_safe_url(response)}: {snippet}"
    if status in TRANSIENT_STATUS or status >= 500:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return TransientError(message, retry_after)
    return PermanentError(message)


def classify_exception(exc: BaseException, *, what: str) -> IhubError:
    """Wrap a third-party exception (often unpicklable) into our own class (PITFALLS 17)."""
    if isinstance(exc, IhubError):
        return exc
    if isinstance(exc, requests.Timeout | requests.ConnectionError):
        return TransientError(f"{what}: {type(exc).__name__}: {_short(exc)}")
    return PermanentError(f"{what}: {type(exc).__name__}: {_short(exc)}")


def _safe_url(response: requests.Response) -> str:
    """The URL without its query and without any user:password."""
    parts = urlsplit(response.url or "")
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _short(exc: BaseException) -> str:
    """The exception's text without URL queries or userinfo, and with known secrets masked."""
    return redact(strip_urls(str(exc)))[:300]


def redacted_error(exc: BaseException) -> BaseException:
    """A copy of ``exc`` safe to hand to Celery (task-failed/-retried events, Flower): the
    message redacted, no chained cause (its text would travel with the traceback).

    ihub's own errors keep their class; any other becomes ``IhubError("Type: message")``, which
    also survives the pickle round trip that a foreign exception may not (PITFALLS 17)."""
    clean = redact(str(exc))
    if isinstance(exc, TransientError):
        return TransientError(clean, exc.retry_after)
    if isinstance(exc, PermanentError):
        return PermanentError(clean)
    if isinstance(exc, ReauthRequired):
        return ReauthRequired(exc.integration, redact(exc.reason))
    if isinstance(exc, ConfigError):
        return ConfigError(redact(exc.message), [redact(p) for p in exc.problems])
    return IhubError(f"{type(exc).__name__}: {clean}")
