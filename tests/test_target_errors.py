"""The target's own words in a failed write's error, from hand-built responses."""

from __future__ import annotations

import json

import pytest
import requests

from pipeline.errors import PermanentError, TransientError
from pipeline.sinks.target_errors import response_error, target_words


def reply(status: int, body: object, **headers: str) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode() if not isinstance(body, str) else body.encode()
    response.headers.update(headers)
    response.url = "http://target.test/api/now/table/incident?sysparm_query=secret"
    return response


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (
            {"error": {"message": "Mandatory field missing", "detail": "short_description"}},
            "Mandatory field missing: short_description",
        ),
        (
            {"errorMessages": ["Issue does not exist"], "errors": {"summary": "required"}},
            "Issue does not exist; summary: required",
        ),
        (
            {"type": "about:blank", "title": "Bad Request", "detail": "name is empty"},
            "Bad Request: name is empty",
        ),
        ({"error": "invalid_request", "error_description": "bad"}, "invalid_request: bad"),
        ({"message": "nope"}, "nope"),
        ({"data": 1}, None),
        (["not", "an", "object"], None),
    ],
)
def test_known_error_bodies_yield_their_words(body: object, words: str | None) -> None:
    """ServiceNow, Jira, RFC 7807, OAuth-style and plain message bodies are read."""
    assert target_words(body) == words


def test_client_error_keeps_words_and_drops_the_query() -> None:
    """A 400 is permanent, quotes the target, and never the URL's query string."""
    error = response_error(reply(400, {"error": {"message": "Mandatory field missing"}}), what="s")
    assert isinstance(error, PermanentError)
    assert "HTTP 400" in str(error) and "Mandatory field missing" in str(error)
    assert "secret" not in str(error)


def test_throttle_stays_transient_with_retry_after_and_words() -> None:
    """A 429 with Retry-After keeps its class and delay when the words replace the body."""
    error = response_error(
        reply(429, {"error": {"message": "Too Many"}}, **{"Retry-After": "3"}), what="s"
    )
    assert isinstance(error, TransientError) and error.retry_after == 3.0
    assert "Too Many" in str(error)


def test_unknown_body_falls_back_to_the_raw_snippet() -> None:
    """HTML from a proxy is quoted as classify_response quotes it."""
    error = response_error(reply(502, "<html>bad gateway</html>"), what="s")
    assert isinstance(error, TransientError) and "bad gateway" in str(error)
