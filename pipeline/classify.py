"""Classification hooks, for APIs that answer 200 and say in the body that it failed.

An integration names one with ``classify: package.module:function``. The function receives
every 2xx response of the integration's source and of its REST sink (a ``requests.Response``
with its body readable) and returns None when all is well, or the error the response stands
for: a ``TransientError`` (with ``retry_after`` when the body says when to come back) is
retried with backoff, a ``PermanentError`` dead-letters the record (or fails the fetch) at
once. It runs as a requests response hook, after the OAuth 401 replay, so it judges the final
response, and what it raises reaches the code that classifies HTTP errors unchanged.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache
from typing import Any

import requests

from pipeline.errors import IhubError, PermanentError

Classifier = Callable[[requests.Response], IhubError | None]


@cache
def load_hook(path: str) -> Classifier:
    """``package.module:function`` imported once per process."""
    module, _, name = path.partition(":")
    try:
        hook = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise PermanentError(f"classify hook {path!r} cannot be loaded: {exc}") from None
    if not callable(hook):
        raise PermanentError(f"classify hook {path!r} is not callable")
    return hook  # type: ignore[no-any-return]


def install(session: requests.Session, path: str, *, what: str) -> None:
    """Judge every 2xx response ``session`` receives with the hook at ``path``."""
    hook = load_hook(path)

    def check(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if not 200 <= response.status_code < 300:
            return
        try:
            error = hook(response)
        except Exception as exc:  # a bug in the hook must not pass a response as good
            error = PermanentError(f"{what}: classify hook {path} failed: {exc!r}"[:500])
        if error is not None:
            response.close()
            raise error

    session.hooks["response"].append(check)
