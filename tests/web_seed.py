"""Known rows for the dashboard, the API and /metrics tests, around a fixed "now" in UTC.

NOW is 2024-05-11 12:00 UTC, so "today" starts at 2024-05-11 00:00 and the 24 h window at
2024-05-10 12:00. Rows sit on both sides of each boundary; the expected figures below are
worked out by hand from the rows, not from the code under test.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from models import rollups
from models.db import session_scope
from models.schema import DeadLetter, FetchRun, IntegrationState, StagedRecord, Token

NOW = datetime(2024, 5, 11, 12, 0, 0)
MIDNIGHT = datetime(2024, 5, 11)
JUST_BEFORE_MIDNIGHT = MIDNIGHT - timedelta(microseconds=1)
SECRET = "hunter2-very-secret"


def at(hh: int, mm: int = 0, ss: int = 0, day: int = 11) -> datetime:
    return datetime(2024, 5, day, hh, mm, ss)


def _row(integration: str, record_id: str, status: str, **values: Any) -> StagedRecord:
    payload = values.pop("payload", {"id": record_id})
    return StagedRecord(
        integration=integration,
        record_id=record_id,
        version="2024-05-11T00:00:00.000000Z",
        digest="",
        payload=json.dumps(payload),
        status=status,
        attempts=values.pop("attempts", 1),
        deliveries=0,
        created_at=values.pop("created_at", at(0, day=10)),
        **values,
    )


def seed(url: str) -> dict[str, int]:
    """Insert the rows; returns the row ids of the dead records by name."""
    rows: dict[str, StagedRecord] = {}
    # crm done today: one exactly at midnight, 19 at 11:01..11:19; durations 10, 20, ..., 200 ms
    for i in range(20):
        finished = MIDNIGHT if i == 0 else at(11, i)
        rows[f"crm-done-{i}"] = _row(
            "crm",
            f"c{i}",
            "done",
            finished_at=finished,
            started_at=finished - timedelta(seconds=1),
            duration_ms=float(10 * (i + 1)),
            attempts=3 if i < 3 else 1,
        )
    # crm done yesterday, 1 µs before midnight: in the 24 h window, not today; 1000 ms each
    for i in range(5):
        rows[f"crm-old-{i}"] = _row(
            "crm", f"o{i}", "done", finished_at=JUST_BEFORE_MIDNIGHT, duration_ms=1000.0
        )
    dead = {
        "crm-dead-0930": ("crm", "d1", at(9, 30), "PermanentError", "HTTP 422 from target"),
        "crm-dead-1145": ("crm", "d2", at(11, 45), "ValueError", "bad date 'x'"),
        "crm-dead-yday": ("crm", "d3", at(20, 0, day=10), "PermanentError", "HTTP 400"),
        "erp-dead-old": ("erp", "e9", at(10, 0, day=9), "PermanentError", "HTTP 404"),
    }
    for key, (integration, record_id, when, error_class, message) in dead.items():
        rows[key] = _row(
            integration,
            record_id,
            "dead",
            finished_at=when,
            attempts=5 if integration == "crm" else 1,
            error_class=error_class,
            last_error=message,
            payload={"id": record_id, "password": SECRET, "nested": {"api_key": SECRET}},
        )
    rows["crm-retry-today"] = _row(
        "crm",
        "r1",
        "retrying",
        started_at=at(11, 50),
        attempts=2,
        error_class="TransientError",
        last_error="HTTP 503",
    )
    rows["crm-retry-yday"] = _row(
        "crm",
        "r2",
        "retrying",
        started_at=at(22, 0, day=10),
        attempts=2,
        error_class="TransientError",
        last_error="HTTP 502",
    )
    for i in range(3):
        rows[f"crm-pending-{i}"] = _row("crm", f"p{i}", "pending", attempts=0)
    rows["crm-requeued"] = _row("crm", "q1", "pending", attempts=0)
    rows["crm-processing"] = _row("crm", "w1", "processing", started_at=at(11, 59))
    rows["erp-done"] = _row(
        "erp", "e1", "done", finished_at=at(11, 59, 30), duration_ms=5.0, attempts=1
    )
    with session_scope(url) as session:
        session.add_all(rows.values())
        session.flush()
        for key, (_, _, when, error_class, message) in dead.items():
            session.add(_letter(rows[key], when, error_class, message, active=True))
        session.add(
            _letter(rows["crm-requeued"], at(8, 0), "PermanentError", "HTTP 409", active=False)
        )
        session.add_all(_states())
        session.add_all(_runs())
        session.add(
            Token(
                credential="crm:source",
                access_token="encrypted-not-shown",
                expires_at=at(12, 30).replace(tzinfo=UTC).timestamp(),
                refresh_count=7,
                failure_count=1,
                last_error="invalid_grant",
            )
        )
        session.flush()
        rollups.rebuild(session)  # the figures, as the outcomes would have counted them
        return {key: rows[key].id for key in (*dead, "crm-requeued")}


def _letter(
    row: StagedRecord, when: datetime, error_class: str, message: str, *, active: bool
) -> DeadLetter:
    return DeadLetter(
        record_row_id=row.id,
        integration=row.integration,
        record_id=row.record_id,
        version=row.version,
        error_class=error_class,
        message=message,
        traceback=f"Traceback (most recent call last):\n  token={SECRET}\n{error_class}",
        attempts=row.attempts,
        first_failed_at=when,
        last_failed_at=when,
        requeue_count=0 if active else 1,
        requeued_at=None if active else at(8, 30),
        active=active,
    )


def _states() -> list[IntegrationState]:
    return [
        IntegrationState(
            name="crm",
            status="active",
            watermark_updated="2024-05-11T11:55:00.000000Z",
            watermark_id="c19",
            last_fetch_at=at(11, 58),
            last_success_at=at(11, 58),
        ),
        IntegrationState(
            name="erp",
            status="reauth_required",
            status_reason="refresh token revoked",
            last_fetch_at=at(9, 0),
            last_success_at=at(8, 0),
        ),
        IntegrationState(
            name="hr", status="active", last_fetch_at=at(11, 0), last_success_at=at(10, 0)
        ),
    ]


def _runs() -> list[FetchRun]:
    return [
        FetchRun(
            integration="crm",
            status="failed",
            started_at=at(11, 0),
            finished_at=at(11, 0) + timedelta(milliseconds=300),
            pages=0,
            fetched=0,
            staged=0,
        ),
        FetchRun(
            integration="crm",
            status="ok",
            started_at=at(11, 58),
            finished_at=at(11, 58, 2),
            pages=1,
            fetched=20,
            staged=20,
        ),
        FetchRun(integration="hr", status="running", started_at=at(11, 59)),
    ]


# The figures, worked out from the rows above.
COUNTS = {
    "crm": {"pending": 4, "processing": 1, "retrying": 2, "done": 25, "dead": 3},
    "erp": {"pending": 0, "processing": 0, "retrying": 0, "done": 1, "dead": 1},
    "hr": {"pending": 0, "processing": 0, "retrying": 0, "done": 0, "dead": 0},
}
# each death counts, a requeued one too (q1 died at 08:00 and was requeued: it still happened)
TODAY = {"done": 21, "dead": 3}  # crm 20 (midnight included) + erp 1; crm dead 08:00, 09:30, 11:45
WINDOW_24H = {"done": 26, "dead": 4}  # + 5 done 1 µs before midnight, + crm dead 05-10 20:00
# today: 5, 10, 20, ..., 200 (21 values): mean 2105 / 21; p95 = rank ceil(19.95) = 20th = 190,
# reported as the bound of its bucket (100, 250]: 250
# 24 h: + 5 x 1000 (26 values): mean 7105 / 26; p95 = rank ceil(24.7) = 25th = 1000 (a bound)
PROCESSING_TODAY = {"count": 21, "avg_ms": round(2105 / 21, 3), "p95_ms": 250.0}
PROCESSING_24H = {"count": 26, "avg_ms": round(7105 / 26, 3), "p95_ms": 1000.0}
