"""Thin Celery glue over the engine. ``celery -A tasks worker`` finds ``tasks.app``.

The app is built on first access (PEP 562), so importing this package connects to nothing.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from tasks.app import get_app

        return get_app()
    raise AttributeError(name)
