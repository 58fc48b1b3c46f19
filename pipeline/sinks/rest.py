"""The REST sink: another system's API as the target, with the same OAuth 2.0 machinery as the
sources (shared token, single-flight refresh, one replay on a 401) and, optionally, a request
rate shared by every worker.

Two ways to address a record:

* by key (``url`` with ``{id}``): a PUT by key is idempotent by itself, and the record's version
  travels in the body so a target that compares versions can refuse a stale write; that refusal
  (409/412 by default) means a newer version is already there, which is success.
* by look-up (``lookup``), for targets that assign their own ids: see ``pipeline.sinks.lookup``.

A failed write keeps the target's own words (``pipeline.sinks.target_errors``).
"""

from __future__ import annotations

from typing import Any

import requests

from pipeline.config import RestSinkConfig
from pipeline.errors import PermanentError, classify_exception
from pipeline.sinks.lookup import LookupUpsert, Reply, safe_segment
from pipeline.sinks.target_errors import response_error
from pipeline.sources.ratelimit import RateLimiter


class RestSink:
    def __init__(
        self,
        name: str,
        config: RestSinkConfig,
        auth: requests.auth.AuthBase | None = None,
        *,
        database_url: str | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.session = requests.Session()
        self.session.auth = auth
        self.session.headers.update(config.headers)
        self.limiter = limiter
        self.what = f"sink {name}"
        self.keyed: LookupUpsert | None = None
        if config.lookup is not None:
            if database_url is None:
                raise ValueError("a REST sink with lookup needs ihub's database for its id map")
            self.keyed = LookupUpsert(name, config, database_url, self.send)

    def upsert(self, record: dict[str, Any], version: str) -> bool:
        """Send ``record``; True when the target took it, False when it already had newer."""
        key = self._key(record)
        body = dict(record)
        if self.config.version_field:
            body[self.config.version_field] = version
        if self.keyed is not None:
            return self.keyed.upsert(key, body, version)
        url = self.config.url.replace("{id}", safe_segment(key, what=f"{self.what}: key"))
        reply = self.send(self.config.method, url, json=body, allow=self.config.stale_status)
        return reply.status not in self.config.stale_status

    def delete(self, key: str, version: str, *, action: str | None = None) -> bool:
        """Apply a deletion of ``version`` (``sink.deletes``: DELETE, or a state change)."""
        if self.keyed is None:
            raise PermanentError(f"{self.what}: deletions reach a REST target with sink.lookup")
        return self.keyed.delete(key, version)

    def send(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        allow: tuple[int, ...] | list[int] = (),
    ) -> Reply:
        """One request, within the shared rate; an HTTP error raises as its class (statuses in
        ``allow`` are returned instead), a 2xx body is parsed when it is JSON."""
        if self.limiter is not None:
            self.limiter.acquire()
        try:
            response = self.session.request(
                method, url, json=json, params=params, headers=headers, timeout=self.config.timeout
            )
        except requests.RequestException as exc:
            raise classify_exception(exc, what=self.what) from None
        with response:
            if response.status_code in allow:
                return Reply(response.status_code, None)
            error = response_error(response, what=self.what)
            if error is not None:
                raise error
            try:
                body = response.json() if response.content else None
            except ValueError:
                body = None
            return Reply(response.status_code, body)

    def _key(self, record: dict[str, Any]) -> str:
        key = record.get(self.config.key)
        if key is None or key == "":
            raise PermanentError(f"{self.what}: record has no key field {self.config.key!r}")
        return str(key)
