"""Secrets never reach a log line: a filter that masks every secret value ihub has seen.

Values are registered as they are loaded (client secrets, passwords, secret-looking headers
and parameters of the config) or received (access and refresh tokens); patterns also catch
bearer headers, token fields, the password of a URL and secret-named query parameters that slip
through. It sits with the models because text is redacted before it is stored;
``pipeline.errors.redacted_error`` applies it to an exception that leaves the process (to
Celery's events, which Flower shows).
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "********"
SECRET_NAME = re.compile(
    r"(?i)(pass(word|wd|phrase)?|secret|token|api[-_]?key|auth|credential|private[-_]?key|"
    r"session|cookie|signature|assertion|[-_.]key$|ssn|iban|card[-_]?number|cvv)"
)
_QUERY_SECRET = (
    r"pass(?:word|wd)?|secret|token|api[-_]?key|apikey|key|auth\w*|credential\w*|sig\w*|"
    r"session\w*|code|access[-_]?token|client[-_]?secret"
)
_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{6,}"),
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?basic\s+)[A-Za-z0-9+/=]{8,}"),
    re.compile(r"(?i)((?:access|refresh)_token[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9._~+/=-]{6,}"),
    re.compile(r"(?i)(client_secret[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,}]{3,}"),
    # the password of scheme://user:password@host
    re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s/@:'\"]*:)[^\s/@'\"]+(?=@)"),
    # ?api_key=... / &token=... in a URL or a form body
    re.compile(rf"(?i)([?&](?:[\w.-]*[-_])?(?:{_QUERY_SECRET})=)[^&#\s'\"]+"),
]
_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)(?:[^\s/@'\"]*@)?([^\s?#'\"]*)\?[^\s#'\")]*")
_RELATIVE = re.compile(r"(url: /[^\s?'\"]*)\?[^\s'\")]*")
_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a value that must be masked wherever it appears (short values are ignored)."""
    if value and len(value) >= 6:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    for value in sorted(_secrets, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


def strip_urls(text: str) -> str:
    """Error texts: every URL without its query string and userinfo (``?…`` marks the cut).

    A connection error quotes the URL it failed on (urllib3: ``... with url: /x?token=...``),
    and a query may carry a key or a signature that no pattern above recognises."""
    text = _URL.sub(lambda m: f"{m.group(1)}{m.group(2)}?…", text)
    return _RELATIVE.sub(lambda m: f"{m.group(1)}?…", text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and exception text) with secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Attach the filter to every handler of ``logger`` (root by default), once."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    # requests-oauthlib logs whole tokens at DEBUG (its issue #536).
    for name in ("requests_oauthlib", "oauthlib"):
        logging.getLogger(name).setLevel(logging.WARNING)
