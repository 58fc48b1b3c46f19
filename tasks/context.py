"""One engine context per worker process, rebuilt after a fork."""

from __future__ import annotations

import logging
import os

from pipeline.errors import redacted_error
from pipeline.hub import Hub

log = logging.getLogger(__name__)

_hub: tuple[int, Hub] | None = None


def hub() -> Hub:
    global _hub
    if _hub is None or _hub[0] != os.getpid():
        _hub = (os.getpid(), Hub.from_env())
    return _hub[1]


def reset() -> None:
    global _hub
    _hub = None


def leaving(exc: BaseException, what: str) -> BaseException:
    """The exception to hand to Celery instead of ``exc``: its task-failed and task-retried
    events (what Flower shows) carry the exception's text and traceback, unfiltered by our
    logging. The original goes to this worker's log first, through the redacting filter."""
    log.error("%s: %s", what, type(exc).__name__, exc_info=exc)
    return redacted_error(exc)
