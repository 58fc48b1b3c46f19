"""A duplicate delivery storm: every process_record published twice (chaos scenario 6).

Workers import this module with ``-I tests.storm`` and ``IHUB_TEST_STORM=1`` (so their retries
and the reconciler's republishes are doubled too); the test process calls ``install()`` for
its own fan-out. An even row id is sent again under the same task id (a publisher retry after a
lost confirm), an odd one under a new id (a second producer).
"""

from __future__ import annotations

import os
import threading
from datetime import datetime
from typing import Any

from celery.signals import after_task_publish

_resending = threading.local()


def _publish_again(
    sender: str | None = None, headers: Any = None, body: Any = None, **_: Any
) -> None:
    if sender != "ihub.process_record" or getattr(_resending, "on", False):
        return
    from tasks.app import get_app

    args = list(body[0])
    eta = headers.get("eta")
    _resending.on = True
    try:
        get_app().send_task(
            sender,
            args=args,
            task_id=headers["id"] if int(args[0]) % 2 == 0 else None,
            eta=datetime.fromisoformat(eta) if eta else None,
        )
    finally:
        _resending.on = False


def install() -> None:
    after_task_publish.connect(_publish_again, weak=False)


def uninstall() -> None:
    after_task_publish.disconnect(_publish_again)


if os.environ.get("IHUB_TEST_STORM") == "1":
    install()
