"""The target's own words for a failed write, so a dead letter reads as the target meant it.

Recognised bodies: ServiceNow ``{"error": {"message", "detail"}}``; Jira ``{"errorMessages":
[...], "errors": {field: message}}``; RFC 7807 problem details ``{"title", "detail"}``; OAuth-style
``{"error", "error_description"}``; and a plain ``{"message"}``. Anything else falls back to the
start of the body, as ``classify_response`` quotes it.
"""

from __future__ import annotations

from typing import Any

import requests

from pipeline.errors import IhubError, PermanentError, TransientError, classify_response

MAX_WORDS = 1000


def target_words(body: Any) -> str | None:
    """The error text a parsed JSON body carries, or None when it carries none we know."""
    if not isinstance(body, dict):
        return None
    for reader in (_servicenow, _jira, _problem, _oauth, _plain):
        words = reader(body)
        if words:
            return words[:MAX_WORDS]
    return None


def response_error(response: requests.Response, *, what: str) -> IhubError | None:
    """``classify_response``, with the target's words in place of the raw body when found."""
    error = classify_response(response, what=what)
    if error is None:
        return None
    try:
        words = target_words(response.json())
    except ValueError:
        words = None
    if not words:
        return error
    url = (response.url or "").split("?", 1)[0]
    message = f"{what}: HTTP {response.status_code} from {url}: {words}"
    if isinstance(error, TransientError):
        return TransientError(message, error.retry_after)
    return PermanentError(message)


def _servicenow(body: dict[str, Any]) -> str | None:
    error = body.get("error")
    if not isinstance(error, dict):
        return None
    return _join(error.get("message"), error.get("detail"))


def _jira(body: dict[str, Any]) -> str | None:
    messages = body.get("errorMessages")
    fields = body.get("errors")
    parts = [str(m) for m in messages] if isinstance(messages, list) else []
    if isinstance(fields, dict):
        parts += [f"{name}: {text}" for name, text in fields.items()]
    return "; ".join(parts) or None


def _problem(body: dict[str, Any]) -> str | None:
    if "detail" not in body and "title" not in body:
        return None
    return _join(body.get("title"), body.get("detail"))


def _oauth(body: dict[str, Any]) -> str | None:
    if not isinstance(body.get("error"), str):
        return None
    return _join(body["error"], body.get("error_description"))


def _plain(body: dict[str, Any]) -> str | None:
    message = body.get("message")
    return str(message) if isinstance(message, str) and message else None


def _join(first: Any, second: Any) -> str | None:
    parts = [str(p) for p in (first, second) if p not in (None, "")]
    return ": ".join(parts) or None
