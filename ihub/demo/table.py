"""The demo source's data: records ordered by (updated_at, id), tombstones, and its clock.

Every method takes the source's one lock, so the HTTP threads and a test that seeds, mutates or
freezes the clock never see a half-applied change. Records are copy-on-write: a reader may
serialise one after releasing the lock.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import threading
import time
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from ihub.demo.options import DemoSourceOptions

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_WORDS = ["printer", "vpn", "laptop", "email", "badge", "wifi", "license", "backup", "disk"]
_VERBS = ["broken", "slow", "not working", "requested", "expired", "misconfigured"]
_CATEGORIES = ["hardware", "software", "network", "access"]
_TAGS = ["urgent", "remote", "onsite", "vip", "repeat", "new-hire"]
_STATES = ["new", "in_progress", "resolved"]
MANAGED = frozenset({"id", "number", "version", "updated_at"})


def to_us(dt: datetime) -> int:
    """Microseconds since the epoch: integer keys keep ordering and equality exact."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - EPOCH) // timedelta(microseconds=1)


def parse_ts(text: str) -> int:
    return to_us(datetime.fromisoformat(text.strip()))


def encode_cursor(updated_at: str, record_id: str) -> str:
    raw = json.dumps([updated_at, record_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    updated_at, record_id = json.loads(raw)
    return parse_ts(updated_at), str(record_id)


class RecordTable:
    """The table the API lists; its Python methods are the test's hands."""

    def __init__(self, options: DemoSourceOptions, lock: threading.Lock) -> None:
        self.options, self._lock = options, lock
        self._records: dict[str, dict[str, Any]] = {}
        self._ts: dict[str, int] = {}
        self._index: list[tuple[int, str]] = []  # sorted (updated_at_us, id)
        self._tombstones: list[tuple[int, str]] = []  # sorted (deleted_at_us, id)
        self._next_number = 1
        self._rng = random.Random(0)
        self._clock: int | None = None  # frozen time in microseconds, or None for the real one

    def _truncate(self, us: int) -> int:
        res = max(1, round(self.options.timestamp_resolution * 1_000_000))
        return us - us % res

    def format(self, us: int) -> str:
        dt = EPOCH + timedelta(microseconds=us)
        if self.options.timestamp_resolution < 1 or us % 1_000_000:
            return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return dt.strftime("%Y-%m-%dT%H:%M:%SZ")

    def _store(self, record: dict[str, Any], us: int) -> None:
        """Replace a record (copy-on-write, so readers may serialise it after the lock)."""
        rid = record["id"]
        old = self._ts.get(rid)
        if old is not None:
            del self._index[bisect_left(self._index, (old, rid))]
        record["updated_at"] = self.format(us)
        self._records[rid], self._ts[rid] = record, us
        insort(self._index, (us, rid))

    def _new_record(self, fields: dict[str, Any], us: int) -> dict[str, Any]:
        number, rng = self._next_number, self._rng
        self._next_number += 1
        record: dict[str, Any] = {
            "id": f"REC{number:06d}",
            "number": number,
            "short_description": f"{rng.choice(_WORDS)} {rng.choice(_VERBS)}",
            "priority": rng.randint(1, 4),
            "state": "new",
            "version": 1,
            "updated_at": "",
            "details": {"category": rng.choice(_CATEGORIES), "tags": rng.sample(_TAGS, 2)},
        }
        record.update(copy.deepcopy(fields))
        self._store(record, us)
        return record

    def seed(self, n: int, *, start: datetime | None = None) -> None:
        """Add n records in id order, spread between `start` (default n/4 s ago) and now."""
        now = self._wallclock()
        first = to_us(start) if start else now - n * 250_000
        step = (now - first) // max(n, 1)
        with self._lock:
            for i in range(n):
                self._new_record({}, self._truncate(first + i * step))

    def insert(self, record: dict[str, Any] | None = None) -> dict[str, Any]:
        """Add a record (managed fields in `record` are ignored) stamped now."""
        fields = {k: v for k, v in (record or {}).items() if k not in MANAGED}
        with self._lock:
            return copy.deepcopy(self._new_record(fields, self._now()))

    def _wallclock(self) -> int:
        return self._clock if self._clock is not None else time.time_ns() // 1000

    def _now(self) -> int:
        return self._truncate(self._wallclock())

    def now(self) -> datetime:
        """The source's clock (frozen or real), as an aware UTC datetime."""
        with self._lock:
            return EPOCH + timedelta(microseconds=self._wallclock())

    def freeze_clock(self, at: datetime | None) -> None:
        """Stamp every change at ``at`` from now on (None: the real clock again)."""
        with self._lock:
            self._clock = to_us(at) if at is not None else None

    def advance_clock(self, seconds: float) -> None:
        """Move a frozen clock forward."""
        with self._lock:
            if self._clock is None:
                raise RuntimeError("the clock is not frozen")
            self._clock += round(seconds * 1_000_000)

    def delete(self, record_id: str) -> None:
        """Delete a record: a tombstone in ``/api/deleted``, and with ``soft_delete`` the record
        stays listed, flagged ``deleted: true`` with a new version."""
        with self._lock:
            old = self._records[record_id]
            us = max(self._now(), self._ts[record_id])
            if self.options.soft_delete:
                self._store({**old, "deleted": True, "version": old["version"] + 1}, us)
            else:
                del self._index[bisect_left(self._index, (self._ts.pop(record_id), record_id))]
                del self._records[record_id]
            insort(self._tombstones, (us, record_id))

    def clear(self) -> None:
        """Forget every record and tombstone (numbering restarts)."""
        with self._lock:
            self._records.clear()
            self._ts.clear()
            self._index.clear()
            self._tombstones.clear()
            self._next_number = 1

    def update(self, record_id: str, **fields: Any) -> dict[str, Any]:
        """Change a record; its version always grows even if the truncated timestamp does not."""
        if MANAGED & fields.keys():
            raise ValueError("id, number, version and updated_at are managed by the source")
        with self._lock:
            old = self._records[record_id]
            if old.get("deleted"):
                raise KeyError(f"{record_id} is deleted")
            record = {**old, **copy.deepcopy(fields), "version": old["version"] + 1}
            self._store(record, max(self._now(), self._ts[record_id]))
            return copy.deepcopy(record)

    def update_many(self, record_ids: list[str], **fields: Any) -> int:
        """``update`` of each record, with the time index rebuilt once, not once a record
        (each ``update`` moves a list entry: a million of them took minutes)."""
        if MANAGED & fields.keys():
            raise ValueError("id, number, version and updated_at are managed by the source")
        with self._lock:
            gone = [rid for rid in record_ids if self._records[rid].get("deleted")]
            if gone:  # checked first: a refused call changes nothing
                raise KeyError(f"{gone[0]} is deleted")
            moved: dict[str, int] = {}
            for record_id in record_ids:
                old = self._records[record_id]
                us = max(self._now(), self._ts[record_id])
                record = {**old, **copy.deepcopy(fields), "version": old["version"] + 1}
                record["updated_at"] = self.format(us)
                self._records[record_id], self._ts[record_id] = record, us
                moved[record_id] = us
            kept = [entry for entry in self._index if entry[1] not in moved]
            self._index = sorted(kept + [(us, rid) for rid, us in moved.items()])
            return len(moved)

    def mutate_random(self, k: int, rng: random.Random, *, deletes: float = 0.0) -> None:
        """k random changes (about 1 in 5 an insert, ``deletes`` of them a deletion) to simulate
        a live system."""
        for _ in range(k):
            with self._lock:
                ids = [i for i, r in self._records.items() if not r.get("deleted")]
            draw = rng.random()
            if not ids or draw < 0.2:
                self.insert({"priority": rng.randint(1, 4)})
            elif draw < 0.2 + deletes:
                self.delete(rng.choice(ids))
            else:
                self.update(rng.choice(ids), state=rng.choice(_STATES), priority=rng.randint(1, 4))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The live records (a soft-deleted one is not live)."""
        with self._lock:
            return {k: copy.deepcopy(v) for k, v in self._records.items() if not v.get("deleted")}

    def deleted_ids(self) -> set[str]:
        with self._lock:
            return {record_id for _, record_id in self._tombstones}

    def get(self, record_id: str) -> dict[str, Any] | None:
        """One record as stored (not a copy: records are replaced, never changed in place)."""
        with self._lock:
            return self._records.get(record_id)

    def listing(
        self,
        *,
        since: int | None = None,
        after: tuple[int, str] | None = None,
        match: Callable[[int, str], bool] | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> tuple[int, list[dict[str, Any]], bool]:
        """(total from ``since``, the page, whether more follow), ordered by (updated, id):
        from ``since`` (closed), strictly after ``after``, or filtered by ``match``."""
        with self._lock:
            if match is not None:
                keys = [key for key in self._index if match(*key)]
                page = keys[offset : offset + limit]
                total, more = len(keys), offset + limit < len(keys)
            else:
                lo = bisect_left(self._index, (since, "")) if since is not None else 0
                start = max(lo, bisect_right(self._index, after)) if after else lo
                page = self._index[start + offset : start + offset + limit]
                total, more = len(self._index) - lo, start + offset + limit < len(self._index)
            return total, [self._records[rid] for _, rid in page], more

    def tombstone_listing(
        self, *, since: int | None, after: tuple[int, str] | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        with self._lock:
            lo = bisect_left(self._tombstones, (since, "")) if since is not None else 0
            start = max(lo, bisect_right(self._tombstones, after)) if after else lo
            page = self._tombstones[start : start + limit]
            rows = [{"id": rid, "deleted_at": self.format(us)} for us, rid in page]
            return rows, start + limit < len(self._tombstones)
