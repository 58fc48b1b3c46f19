"""pipeline/retry.py and pipeline/errors.py: the backoff schedule and the error taxonomy.

Pure functions, no sleeping, no Celery; HTTP responses are hand-built requests.Response objects.
"""

from __future__ import annotations

import inspect
import pickle
import pkgutil
import random
import subprocess
import sys
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline
from pipeline import errors
from pipeline.errors import (
    ConfigError,
    IhubError,
    PermanentError,
    ReauthRequired,
    TransientError,
    classify_exception,
    classify_response,
    parse_retry_after,
)
from pipeline.retry import backoff_seconds, expected_total_wait

REPO = Path(__file__).resolve().parents[1]
URL = "https://api.example.com/v1/items?access_token=tok-SECRET-123&page=2"


# --- backoff_seconds ------------------------------------------------------------------------


def test_schedule_without_jitter_doubles_up_to_cap() -> None:
    """Jitter off, base 2, cap 600: 2, 4, 8, ... 512, then 600 for every later attempt."""
    got = [backoff_seconds(n, base=2, cap=600, jitter=False) for n in range(1, 14)]
    assert got == [2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600, 600, 600]


def test_schedule_huge_attempt_stays_capped() -> None:
    """A very large attempt number does not overflow: it is the cap."""
    assert backoff_seconds(1000, base=2, cap=600, jitter=False) == 600


@settings(max_examples=200, deadline=None, database=None)
@given(
    attempt=st.integers(min_value=1, max_value=60),
    base=st.floats(min_value=0, max_value=100, allow_nan=False),
    cap=st.floats(min_value=0, max_value=3600, allow_nan=False),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_jitter_stays_within_zero_and_ceiling(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    """Full jitter always lands in [0, min(cap, base * 2**(attempt-1))]."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    delay = backoff_seconds(attempt, base=base, cap=cap, jitter=True, rng=random.Random(seed))
    assert 0.0 <= delay <= ceiling


def test_jitter_spreads_delays() -> None:
    """With jitter on, many draws for one attempt are not all the same value."""
    rng = random.Random(7)
    draws = {backoff_seconds(5, base=2, cap=600, rng=rng) for _ in range(50)}
    assert len(draws) > 40
    assert all(0 <= d <= 32 for d in draws)


@pytest.mark.parametrize(
    ("retry_after", "jitter", "expected"),
    [
        (30.0, True, 30.0),
        (30.0, False, 30.0),
        (0.0, True, 0.0),
        (10_000.0, False, 600.0),
        (-5.0, True, 0.0),
    ],
    ids=["honoured_jitter", "honoured_no_jitter", "zero", "capped", "negative_is_zero"],
)
def test_retry_after_overrides_and_is_capped(
    retry_after: float, jitter: bool, expected: float
) -> None:
    """A Retry-After wins over the exponential schedule, clamped to [0, cap]."""
    assert backoff_seconds(9, base=2, cap=600, jitter=jitter, retry_after=retry_after) == expected


@pytest.mark.parametrize("attempt", [0, -1, -100])
def test_attempt_below_one_raises(attempt: int) -> None:
    """Attempt numbers start at 1; anything smaller is a ValueError."""
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        backoff_seconds(attempt, base=2, cap=600)


def test_expected_total_wait_is_half_the_ceilings() -> None:
    """The mean total wait is half the sum of the capped ceilings."""
    assert expected_total_wait(3, base=2, cap=600) == (2 + 4 + 8) / 2
    assert expected_total_wait(11, base=2, cap=600) == (1022 + 600 + 600) / 2
    assert expected_total_wait(0, base=2, cap=600) == 0


# --- parse_retry_after ----------------------------------------------------------------------

NOW = 1_700_000_000.0


def http_date(epoch: float) -> str:
    return format_datetime(datetime.fromtimestamp(epoch, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        (http_date(NOW + 90), 90.0),
        (http_date(NOW - 3600), 0.0),
        ("Tue, 14 Nov 2023 22:15:00 GMT", 100.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("1.5", None),
        ("-3", None),
    ],
    ids=[
        "seconds",
        "padded",
        "zero",
        "http_date",
        "past_date",
        "literal_date",
        "none",
        "empty",
        "garbage",
        "fraction",
        "negative",
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Delta-seconds and HTTP-dates give seconds to wait (past dates 0); junk gives None."""
    assert parse_retry_after(value, now=NOW) == expected


# --- classify_response ----------------------------------------------------------------------


def response(
    status: int, body: bytes = b'{"error": "x"}', headers: dict[str, str] | None = None
) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r._content = body
    r.headers.update(headers or {})
    r.url = URL
    r.encoding = "utf-8"
    return r


@pytest.mark.parametrize(
    ("status", "headers", "kind", "retry_after"),
    [
        (200, {}, None, None),
        (204, {}, None, None),
        (304, {}, None, None),
        (400, {}, PermanentError, None),
        (401, {}, PermanentError, None),
        (403, {}, PermanentError, None),
        (404, {}, PermanentError, None),
        (408, {}, TransientError, None),
        (422, {}, PermanentError, None),
        (425, {}, TransientError, None),
        (429, {"Retry-After": "17"}, TransientError, 17.0),
        (429, {}, TransientError, None),
        (500, {}, TransientError, None),
        (502, {}, TransientError, None),
        (503, {"retry-after": "5"}, TransientError, 5.0),
        (504, {}, TransientError, None),
        (599, {}, TransientError, None),
    ],
    ids=lambda v: str(v) if isinstance(v, int) else None,
)
def test_classify_response(
    status: int,
    headers: dict[str, str],
    kind: type[IhubError] | None,
    retry_after: float | None,
) -> None:
    """Success is None; 408/425/429/5xx are transient (with Retry-After); other 4xx permanent."""
    error = classify_response(response(status, headers=headers), what="source items")
    if kind is None:
        assert error is None
        return
    assert type(error) is kind
    message = str(error)
    assert message.startswith(f"source items: HTTP {status} from https://api.example.com/v1/items")
    assert '{"error": "x"}' in message
    assert "SECRET" not in message  # the query string (which may hold a token) is dropped
    if kind is TransientError:
        assert error.retry_after == retry_after  # type: ignore[union-attr]


def test_classify_response_cuts_body_and_flattens_newlines() -> None:
    """Only the first 200 characters of the body are quoted, on a single line."""
    body = ("line one\nline two\n" + "z" * 1000).encode()
    message = str(classify_response(response(500, body), what="sink"))
    assert "\n" not in message
    assert message.endswith("line one line two " + "z" * (200 - len("line one\nline two\n")))


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (requests.Timeout("read timed out"), TransientError),
        (requests.ReadTimeout("read timed out"), TransientError),
        (requests.ConnectTimeout("connect timed out"), TransientError),
        (requests.ConnectionError("connection refused"), TransientError),
        (ValueError("bad json"), PermanentError),
        (KeyError("id"), PermanentError),
        (requests.HTTPError("418"), PermanentError),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_classify_exception(exc: BaseException, kind: type[IhubError]) -> None:
    """Timeouts and connection errors are transient; anything else is permanent."""
    error = classify_exception(exc, what="source items")
    assert type(error) is kind
    assert str(error).startswith(f"source items: {type(exc).__name__}: ")


def test_classify_exception_passes_our_own_errors_through() -> None:
    """An IhubError is returned as the same object, not wrapped."""
    original = TransientError("slow", 3.0)
    assert classify_exception(original, what="x") is original


# --- pickling -------------------------------------------------------------------------------

SAMPLES: dict[type[BaseException], tuple[object, ...]] = {
    IhubError: ("root",),
    ConfigError: ("f.yaml: invalid configuration", ["f.yaml: a.b: expected c"]),
    TransientError: ("HTTP 503", 12.5),
    PermanentError: ("HTTP 422",),
    ReauthRequired: ("incidents", "invalid_grant"),
}
ERROR_CLASSES = sorted(
    (
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == errors.__name__
    ),
    key=lambda c: c.__name__,
)


def test_every_error_class_has_a_pickle_sample() -> None:
    """The pickle test below covers every exception class defined in pipeline/errors.py."""
    assert set(ERROR_CLASSES) == set(SAMPLES)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_error_survives_pickle(cls: type[BaseException]) -> None:
    """pickle round trip keeps the exact type, args, attributes and message."""
    original = cls(*SAMPLES[cls])
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is cls
    assert copy.args == original.args
    assert vars(copy) == vars(original)
    assert str(copy) == str(original)


@pytest.mark.parametrize(
    "original",
    [ConfigError("just a message"), TransientError("no hint")],
    ids=["config_no_problems", "transient_no_retry_after"],
)
def test_error_with_defaults_survives_pickle(original: IhubError) -> None:
    """Optional constructor arguments left out still round-trip."""
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is type(original)
    assert vars(copy) == vars(original)


# --- no Celery in the engine ----------------------------------------------------------------


def test_importing_every_pipeline_module_does_not_import_celery() -> None:
    """Every module under pipeline/ imports in a fresh interpreter without pulling in celery."""
    names = sorted(m.name for m in pkgutil.walk_packages(pipeline.__path__, prefix="pipeline."))
    assert "pipeline.sync" in names and "pipeline.sinks.sql" in names
    code = (
        f"import sys, {', '.join(names)}\n"
        "bad = sorted(m for m in sys.modules if m == 'celery' or m.startswith('celery.'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
