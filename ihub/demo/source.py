"""A real HTTP demo source: an OAuth 2.0 token endpoint plus a paged REST API over a table.

It exists so the demo, the tests and the benchmarks exercise real HTTP, real RFC 6749 token
semantics (rotation, revocation, expiry) and keyset paging over data that changes while it is
read, without any external service. All state sits behind one lock so handler threads and the
test thread (seeding, mutating, injecting faults) never see a half-applied change.

Besides ``/api/records`` it serves the same table in the other styles real APIs use (Link
headers, next URLs, a ServiceNow-like table API, a POST search, a tombstone listing): see
``ihub.demo.styles``. Tests can freeze its clock, delete records, and read ``requests``, the log
of API requests it answered.

The parts, one job each: ``table`` (the records and the clock), ``oauth`` (the token
endpoint), ``server`` (HTTP), ``standalone`` (``python -m ihub.demo.source``); this module routes
requests between them and gives tests one object to hold.
"""

from __future__ import annotations

import binascii
import contextlib
import json
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ihub.demo import standalone
from ihub.demo import styles as demostyles
from ihub.demo.oauth import TokenEndpoint
from ihub.demo.options import DemoSourceOptions, Response, error
from ihub.demo.server import BackgroundServer
from ihub.demo.table import RecordTable, decode_cursor, encode_cursor, parse_ts

__all__ = ["RECORDS_PATH", "TOKEN_PATH", "DemoSource", "DemoSourceOptions", "Response", "main"]

TOKEN_PATH = "/oauth/token"
RECORDS_PATH = "/api/records"
_COUNTERS = (
    "token_requests",
    "client_credentials_grants",
    "refresh_grants",
    "password_grants",
    "invalid_grant",
    "invalid_client",
    "api_requests",
    "api_401",
    "injected_failures",
)


@dataclass
class _Fault:
    prefix: str
    status: int
    remaining: int
    retry_after: str | None
    body: str


class DemoSource:
    """The server plus its data; the Python methods are the operator's and the test's hands."""

    def __init__(
        self, options: DemoSourceOptions | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.options = options or DemoSourceOptions()
        self.host, self.port = host, port
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._lock = threading.Lock()
        self.table = RecordTable(self.options, self._lock)
        self.tokens = TokenEndpoint(self.options, self.counters, self._lock)
        self._faults: list[_Fault] = []
        self.requests: deque[tuple[float, str, str, dict[str, Any]]] = deque(maxlen=10_000)
        self._server: BackgroundServer | None = None

    def start(self) -> DemoSource:
        """Bind and serve in a daemon thread so a test or benchmark can drive it in-process."""
        if self._server is None:
            self._server = BackgroundServer(self._handle, self.host, self.port)
            self.port = self._server.port
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> DemoSource:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("DemoSource is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def records_url(self) -> str:
        return self.url + RECORDS_PATH

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATH

    # -- the table (ihub.demo.table) -------------------------------------------------------------

    def seed(self, n: int, *, start: datetime | None = None) -> None:
        self.table.seed(n, start=start)

    def insert(self, record: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.table.insert(record)

    def now(self) -> datetime:
        return self.table.now()

    def freeze_clock(self, at: datetime | None) -> None:
        self.table.freeze_clock(at)

    def advance_clock(self, seconds: float) -> None:
        self.table.advance_clock(seconds)

    def delete(self, record_id: str) -> None:
        self.table.delete(record_id)

    def clear(self) -> None:
        """Forget every record, tombstone and logged request; keep tokens and options."""
        self.table.clear()
        self.requests.clear()

    def update(self, record_id: str, **fields: Any) -> dict[str, Any]:
        return self.table.update(record_id, **fields)

    def update_many(self, record_ids: list[str], **fields: Any) -> int:
        return self.table.update_many(record_ids, **fields)

    def mutate_random(self, k: int, rng: random.Random, *, deletes: float = 0.0) -> None:
        self.table.mutate_random(k, rng, deletes=deletes)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return self.table.snapshot()

    def deleted_ids(self) -> set[str]:
        return self.table.deleted_ids()

    # -- the primitives of every listing style (ihub.demo.styles) --------------------------------

    def listing(self, **kwargs: Any) -> tuple[int, list[dict[str, Any]], bool]:
        return self.table.listing(**kwargs)

    def tombstone_listing(
        self, *, since: int | None, after: tuple[int, str] | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        return self.table.tombstone_listing(since=since, after=after, limit=limit)

    @staticmethod
    def parse_us(text: str) -> int:
        return parse_ts(text)

    @staticmethod
    def us_of(record: dict[str, Any]) -> int:
        return parse_ts(record["updated_at"])

    @staticmethod
    def cursor_of(record: dict[str, Any]) -> str:
        return encode_cursor(record["updated_at"], record["id"])

    @staticmethod
    def decode_cursor(cursor: str) -> tuple[int, str]:
        return decode_cursor(cursor)

    # -- tokens (ihub.demo.oauth) ----------------------------------------------------------------

    def revoke_refresh_tokens(self) -> None:
        """Simulate a revoked consent: every token issued so far stops working."""
        self.tokens.revoke()

    def set_refresh_token(self) -> str:
        """Mint a fresh refresh token, as an operator re-consenting would obtain."""
        return self.tokens.mint_refresh_token()

    # -- faults and routing ----------------------------------------------------------------------

    def fail_next(
        self,
        path_prefix: str,
        status: int,
        count: int = 1,
        *,
        retry_after: str | None = None,
        body: str = "<html>bad gateway</html>",
    ) -> None:
        with self._lock:
            self._faults.append(_Fault(path_prefix, status, count, retry_after, body))

    def _take_fault(self, path: str) -> Response | None:
        with self._lock:
            for fault in self._faults:
                if path.startswith(fault.prefix) and fault.remaining > 0:
                    fault.remaining -= 1
                    self.counters["injected_failures"] += 1
                    self._faults = [f for f in self._faults if f.remaining > 0]
                    headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                    return fault.status, fault.body, headers
        return None

    def _handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Response:
        """Route one request; `headers` keys are lower-case."""
        parts = urlsplit(raw_path)
        path = parts.path
        with self._lock:
            if path == TOKEN_PATH:
                self.counters["token_requests"] += 1
            elif path.startswith("/api/"):
                self.counters["api_requests"] += 1
        fault = self._take_fault(path)
        if fault is not None:
            return fault
        if path == "/healthz":
            return 200, "ok", {}
        if path == TOKEN_PATH:
            if method != "POST":
                return error(405, "invalid_request", "use POST", Allow="POST")
            status, payload, extra = self.tokens.handle(body, headers)
            return status, payload, {**extra, "Cache-Control": "no-store", "Pragma": "no-cache"}
        if path == RECORDS_PATH or path.startswith(RECORDS_PATH + "/"):
            if method != "GET":
                return error(405, "invalid_request", "use GET", Allow="GET")
            return self._slow(self._api(path, parts.query, headers))
        if path in demostyles.STYLE_PATHS:
            return self._slow(self._styled(method, path, parts.query, headers, body))
        return error(404, "not_found")

    def _slow(self, response: Response) -> Response:
        if self.options.page_delay > 0:
            time.sleep(self.options.page_delay)
        return response

    def _styled(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> Response:
        allowed = demostyles.STYLE_PATHS[path]
        if method != allowed:
            return error(405, "invalid_request", f"use {allowed}", Allow=allowed)
        with self._lock:
            refused = self._refuse(headers)
        if refused is not None:
            return refused
        params = {k: v[0] for k, v in parse_qs(query).items()}
        self._log(method, path, params, body)
        try:
            return demostyles.handle(self, path, params, body)
        except (ValueError, TypeError, KeyError, binascii.Error) as exc:
            return error(400, "invalid_request", f"bad request: {exc}")

    def _log(self, method: str, path: str, params: dict[str, str], body: bytes) -> None:
        entry: dict[str, Any] = dict(params)
        if body:
            with contextlib.suppress(ValueError):
                entry["__body__"] = json.loads(body)
        self.requests.append((time.monotonic(), method, path, entry))

    def _refuse(self, headers: dict[str, str]) -> Response | None:
        """The 401 for a missing or bad bearer token (lock held); None when it may proceed."""
        if not self.options.require_auth or self.tokens.bearer_ok(headers.get("authorization")):
            return None
        self.counters["api_401"] += 1
        challenge = 'Bearer realm="ihub-demo", error="invalid_token"'
        return error(
            401,
            "invalid_token",
            "access token missing, expired or revoked",
            **{"WWW-Authenticate": challenge},
        )

    def _api(self, path: str, query: str, headers: dict[str, str]) -> Response:
        with self._lock:
            refused = self._refuse(headers)
        if refused is not None:
            return refused
        if path != RECORDS_PATH:
            record = self.table.get(path[len(RECORDS_PATH) + 1 :])
            return (200, record, {}) if record else error(404, "not_found")
        params = {k: v[0] for k, v in parse_qs(query).items()}
        self._log("GET", path, params, b"")
        try:
            return self._page(params)
        except (ValueError, TypeError, binascii.Error) as exc:
            return error(400, "invalid_request", f"bad query parameter: {exc}")

    def _page(self, params: dict[str, str]) -> Response:
        """Keyset page over (updated_at, id): ``cursor`` continues after a row, ``after_id``
        (with ``updated_since``) starts strictly after (updated_since, after_id); ``offset`` or
        ``page`` (1-based) switch to positional paging. ``X-Total-Count`` has the total."""
        since = parse_ts(params["updated_since"]) if "updated_since" in params else None
        limit = min(int(params.get("limit", 100)), self.options.page_size_max)
        offset = int(params["offset"]) if "offset" in params else None
        if "page" in params:
            offset = (int(params["page"]) - 1) * limit
        if limit < 1 or (offset is not None and offset < 0):
            raise ValueError("limit must be >= 1, offset >= 0 and page >= 1")
        after = None
        if offset is None and params.get("cursor"):
            after = decode_cursor(params["cursor"])
        elif offset is None and params.get("after_id") and since is not None:
            after = (since, params["after_id"])
        total, data, more = self.listing(since=since, after=after, offset=offset or 0, limit=limit)
        headers = {"X-Total-Count": str(total)}
        if offset is not None:
            return 200, {"data": data, "total": total, "offset": offset, "limit": limit}, headers
        last = data[-1] if data and more else None
        cursor = encode_cursor(last["updated_at"], last["id"]) if last else None
        return 200, {"data": data, "next_cursor": cursor, "total": total}, headers


def main(argv: list[str] | None = None) -> None:
    """Run the source standalone so other processes (benchmarks, docker) can use it."""
    args = standalone.parser().parse_args(argv)
    source = DemoSource(standalone.options_of(args), host=args.host, port=args.port)
    standalone.run(source.start(), args)


if __name__ == "__main__":
    main()
