"""Upsert by look-up, for targets that assign their own ids (ServiceNow, Jira, Zendesk, CRMs).

    id map has a target id ──▶ PATCH/PUT it ── 404 ─▶ forget it, go on below
    otherwise ──▶ GET by the match field ── found ─▶ remember the id, PATCH/PUT it
                                         └─ none ──▶ POST, remember the id it answers

Creates never duplicate: no POST is sent without a look-up just before it, under a per-key
lock in ihub's database (``models.idmap``), so a POST whose answer was lost (a timeout, a reset,
a 502/504 after the target committed) is found by the look-up of its retry, and no two workers
create one key at the same time. A target that honours ``Idempotency-Key`` also gets one,
derived from the integration, key and version, so a retry of one write carries the same key.
The id map also holds the last version written and a deletion's tombstone: ihub's own version
guard, as the target need not compare versions.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from models import idmap
from pipeline.config import LookupConfig, RestSinkConfig
from pipeline.errors import PermanentError, TransientError
from pipeline.sources.paginators import dig

SERVICENOW_META = ("^", "\n", "\r")


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any


Send = Callable[..., Reply]


def safe_segment(value: str, *, what: str) -> str:
    """``value`` url-quoted as one path segment; '', '.' and '..' are refused, as requests
    would collapse them and the write would reach the collection or its parent."""
    if value in ("", ".", ".."):
        raise PermanentError(f"{what}: {value!r} cannot name a record in a URL path")
    return quote(value, safe="")


def query_params(config: LookupConfig, key: str, *, what: str) -> dict[str, str]:
    """The search's query with the key in place; a key that would rewrite the query is refused."""
    if config.syntax == "servicenow" and any(c in key for c in SERVICENOW_META):
        raise PermanentError(f"{what}: key {key!r} holds a sysparm_query operator (^ or a newline)")
    return {name: value.replace("{key}", key) for name, value in config.query.items()}


def found_ids(config: LookupConfig, body: Any, key: str) -> list[str]:
    """Target ids of the records a search answered whose match field is the key (a record
    without the field in the answer is taken on the query's word)."""
    records = dig(body, config.records)
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list):
        return []
    ids = []
    for record in records:
        if not isinstance(record, dict):
            continue
        match = dig(record, config.field)
        target_id = dig(record, config.id)
        if target_id not in (None, "") and (match is None or str(match) == key):
            ids.append(str(target_id))
    return ids


def idempotency_key(integration: str, key: str, version: str) -> str:
    raw = f"{integration}\x00{key}\x00{version}".encode()
    return hashlib.sha256(raw).hexdigest()[:40]


class LookupUpsert:
    """The look-up upsert and deletion of one integration's sink; ``send`` is the transport."""

    def __init__(self, name: str, config: RestSinkConfig, database_url: str, send: Send) -> None:
        if config.lookup is None:
            raise ValueError("LookupUpsert needs sink.lookup")
        self.name, self.config, self.lookup = name, config, config.lookup
        self.database_url = database_url
        self.send = send
        self.what = f"sink {name}"
        self.lock_ttl = config.timeout + 15.0  # outlives any single request; renewed before each

    def upsert(self, key: str, body: dict[str, Any], version: str) -> bool:
        """Write ``body`` for ``key``; False when this version (or newer) is already there."""
        body = {**body, self.lookup.field: key}
        headers = self._idempotency(key, version)
        with self._locked(key) as renew:
            known = idmap.get(self.database_url, self.name, key)
            if known is not None and known.covers(version):
                return False
            target_id = known.target_id if known else None
            if target_id is not None:
                renew()
                if self._update(target_id, body, headers):
                    self._written(key, target_id, version)
                    return True
                idmap.forget(self.database_url, self.name, key)  # deleted on the target
            target_id = self._find(key, renew)
            if target_id is not None and self._update(target_id, body, headers):
                self._written(key, target_id, version)
                return True
            renew()
            self._written(key, self._create(body, headers), version)
            return True

    def delete(self, key: str, version: str) -> bool:
        """Delete (or change the state of) the key's record, unless a newer version is there;
        the tombstone keeps an older write processed later from bringing it back."""
        deletes = self.config.deletes
        method = deletes.method if deletes else "DELETE"
        with self._locked(key) as renew:
            known = idmap.get(self.database_url, self.name, key)
            if known is not None and known.covers(version):
                return False
            target_id = known.target_id if known and known.target_id else self._find(key, renew)
            changed = False
            if target_id is not None:
                renew()
                url = self._item_url(target_id)
                json = None if method == "DELETE" else (deletes.body if deletes else None)
                reply = self.send(method, url, json=json, allow=(404,))
                changed = reply.status != 404
            keep = method != "DELETE" and target_id is not None
            idmap.bury(self.database_url, self.name, key, version, keep_id=keep)
            return changed

    def _find(self, key: str, renew: Callable[[], None]) -> str | None:
        renew()
        url = self.lookup.url or self.config.url
        params = query_params(self.lookup, key, what=self.what)
        ids = found_ids(self.lookup, self.send("GET", url, params=params).body, key)
        if not ids:
            return None
        idmap.remember(self.database_url, self.name, key, ids[0])
        return ids[0]

    def _update(self, target_id: str, body: dict[str, Any], headers: dict[str, str]) -> bool:
        """PATCH/PUT the record; False when the target no longer has it."""
        url = self._item_url(target_id)
        reply = self.send(self.config.update_method, url, json=body, headers=headers, allow=(404,))
        return reply.status != 404

    def _create(self, body: dict[str, Any], headers: dict[str, str]) -> str | None:
        reply = self.send("POST", self.config.url, json=body, headers=headers)
        target_id = dig(reply.body, self.lookup.created_id_path)
        return None if target_id in (None, "") else str(target_id)

    def _written(self, key: str, target_id: str | None, version: str) -> None:
        idmap.remember(self.database_url, self.name, key, target_id, version=version)

    def _item_url(self, target_id: str) -> str:
        segment = safe_segment(target_id, what=f"{self.what}: target id")
        return self.config.record_url.replace("{target_id}", segment)

    def _idempotency(self, key: str, version: str) -> dict[str, str]:
        if not self.config.idempotency_key:
            return {}
        return {self.config.idempotency_header: idempotency_key(self.name, key, version)}

    @contextmanager
    def _locked(self, key: str) -> Iterator[Callable[[], None]]:
        """Hold the key's lock (waiting at most ``lock_wait``); yields the renewal to call
        before each request, which fails the write when the lock was lost meanwhile."""
        owner, url, ttl = uuid.uuid4().hex, self.database_url, self.lock_ttl
        deadline = time.monotonic() + self.config.lock_wait
        while not idmap.acquire(url, self.name, key, owner, ttl):
            if time.monotonic() >= deadline:
                raise TransientError(
                    f"{self.what}: record {key!r} is being written by another worker",
                    retry_after=1.0,
                )
            time.sleep(0.05)

        def renew() -> None:
            if not idmap.renew(url, self.name, key, owner, ttl):
                raise TransientError(f"{self.what}: lost the lock of record {key!r}")

        try:
            yield renew
        finally:
            idmap.release(url, self.name, key, owner)
