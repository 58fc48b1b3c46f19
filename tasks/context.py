"""One engine context per worker process, rebuilt after a fork."""

from __future__ import annotations

import os

from pipeline.hub import Hub

_hub: tuple[int, Hub] | None = None


def hub() -> Hub:
    global _hub
    if _hub is None or _hub[0] != os.getpid():
        _hub = (os.getpid(), Hub.from_env())
    return _hub[1]


def reset() -> None:
    global _hub
    _hub = None
