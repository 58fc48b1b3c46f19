"""``ihub sync``: one delta now, in this process; behind a running fetch it waits (``--wait``).

Every expected failure ends as one line (or one JSON document) and a documented exit code,
never a traceback:

    0  ok: caught up (with --wait, every record of the runs done or dead)
    1  the source refused the request for good (a 4xx other than 401/408/425/429)
    2  usage or configuration error
    3  busy: another fetch of NAME held it past --timeout (or took it over midway)
    4  source unavailable: connection error, timeout, 5xx or 429 after the page retries
    5  credential refused: the integration is paused until ``ihub auth set`` / ``auth resume``
    6  --wait: records of the run still open at --timeout
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from models import integrations, leases
from pipeline import sync as engine
from pipeline.errors import PermanentError, TransientError
from pipeline.hub import Hub
from pipeline.lease import lease_name, this_process

OK, PERMANENT, USAGE, BUSY, UNAVAILABLE, REFUSED, OPEN = 0, 1, 2, 3, 4, 5, 6
POLL = 0.5


@dataclass
class SyncOutcome:
    """What ``ihub sync`` prints: the runs' totals, and the failure if any."""

    integration: str
    status: str = "ok"
    exit_code: int = OK
    error: str | None = None
    runs: list[int] = field(default_factory=list)
    pages: int = 0
    fetched: int = 0
    staged: int = 0
    more: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def fail(self, status: str, code: int, error: str) -> SyncOutcome:
        self.status, self.exit_code, self.error = status, code, error
        return self

    def as_dict(self) -> dict[str, Any]:
        data = {
            "integration": self.integration,
            "status": self.status,
            "exit_code": self.exit_code,
            "error": self.error,
            "run_id": self.runs[-1] if self.runs else None,
            "runs": self.runs,
            "pages": self.pages,
            "fetched": self.fetched,
            "staged": self.staged,
            "more": self.more,
        }
        return data | self.extra


def sync_now(
    hub: Hub, name: str, publish: Any, *, wait: bool, timeout: float, full_refresh: bool = False
) -> SyncOutcome:
    """Runs of NAME until caught up (or one run without ``wait``) within ``timeout``."""
    deadline = time.monotonic() + timeout
    outcome = SyncOutcome(name)
    owner = f"cli-{this_process()}"
    while True:
        try:
            result = engine.fetch_delta(
                hub, name, publish, owner=owner, full_refresh=full_refresh, holder=this_process()
            )
        except TransientError as exc:
            return outcome.fail("unavailable", UNAVAILABLE, str(exc))
        except PermanentError as exc:
            return outcome.fail("failed", PERMANENT, str(exc))
        if result.status == "busy" and wait and time.monotonic() < deadline:
            time.sleep(POLL)  # the running fetch ends within its budget; then it is ours
            continue
        _add(outcome, result)
        if result.status != "ok":
            return _failed(hub, name, outcome, result.status)
        full_refresh = False  # a continuation goes on from the checkpoint
        if not (wait and result.more and time.monotonic() < deadline):
            return outcome


def _add(outcome: SyncOutcome, result: engine.FetchResult) -> None:
    if result.run_id is not None:
        outcome.runs.append(result.run_id)
    outcome.pages += result.pages
    outcome.fetched += result.fetched
    outcome.staged += result.staged
    outcome.more = result.more


def _failed(hub: Hub, name: str, outcome: SyncOutcome, status: str) -> SyncOutcome:
    if status == "paused":
        reason = integrations.load(hub.database_url, name).status_reason or "refused"
        return outcome.fail("paused", REFUSED, f"credential refused: {reason}")
    if status == "busy":
        holder = leases.current(hub.database_url, lease_name(name))
        if holder is not None:
            outcome.extra["holder"] = {
                "holder": holder.holder,
                "task_id": holder.owner,
                "since": holder.since.isoformat() + "Z" if holder.since else None,
            }
        who = f" by {holder.holder}" if holder and holder.holder else ""
        return outcome.fail("busy", BUSY, f"another fetch of {name} is running{who}")
    return outcome.fail(status, BUSY, f"another fetch of {name} took over ({status})")


def wait_for_runs(database_url: str, run_ids: list[int], *, timeout: float) -> dict[str, int]:
    """Every record of the runs done or dead, within ``timeout``; the counts, summed."""
    from ihub.cli.runner import wait_for_run

    deadline = time.monotonic() + timeout
    total: dict[str, int] = {}
    for run_id in run_ids:
        left = max(0.0, deadline - time.monotonic())
        for key, value in wait_for_run(database_url, run_id, timeout=left).items():
            total[key] = total.get(key, 0) + value
    return total
