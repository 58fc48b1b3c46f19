"""A real HTTP demo source: an OAuth 2.0 token endpoint plus a paged REST API over a table.

It exists so the demo, the tests and the benchmarks exercise real HTTP, real RFC 6749 token
semantics (rotation, revocation, expiry) and keyset paging over data that changes while it is
read, without any external service. All state sits behind one lock so handler threads and the
test thread (seeding, mutating, injecting faults) never see a half-applied change.

Besides ``/api/records`` it serves the same table in the other styles real APIs use (Link
headers, next URLs, a ServiceNow-like table API, a POST search, a tombstone listing): see
``ihub.demo.styles``. Tests can freeze its clock, delete records, and read ``requests``, the log
of API requests it answered.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import copy
import hmac
import json
import logging
import math
import random
import secrets
import threading
import time
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

from ihub.demo import styles as demostyles

log = logging.getLogger(__name__)

TOKEN_PATH = "/oauth/token"
RECORDS_PATH = "/api/records"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_WORDS = ["printer", "vpn", "laptop", "email", "badge", "wifi", "license", "backup", "disk"]
_VERBS = ["broken", "slow", "not working", "requested", "expired", "misconfigured"]
_CATEGORIES = ["hardware", "software", "network", "access"]
_TAGS = ["urgent", "remote", "onsite", "vip", "repeat", "new-hire"]
_STATES = ["new", "in_progress", "resolved"]
_CHOICES = {"expires_in_style": ["int", "str", "missing"], "client_auth": ["basic", "body", "any"]}
_MANAGED = frozenset({"id", "number", "version", "updated_at"})
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

# (status, JSON-able payload or text, extra headers)
Response = tuple[int, Any, dict[str, str]]


@dataclass
class DemoSourceOptions:
    """Knobs that reproduce the behaviours real providers differ on."""

    client_id: str = "demo-client"
    client_secret: str = "demo-secret"
    username: str = "demo-user"
    password: str = "demo-pass"
    initial_refresh_token: str | None = None
    token_lifetime: float = 300.0
    expires_in_style: str = "int"  # "int" | "str" | "missing"
    rotate_refresh_tokens: bool = True
    client_auth: str = "any"  # "basic" | "body" | "any"
    issue_refresh_token_for_client_credentials: bool = False
    page_size_max: int = 500
    timestamp_resolution: float = 1.0
    require_auth: bool = True  # False: the API answers without a bearer token (tests)
    soft_delete: bool = False  # True: delete() flags the record (deleted: true) and keeps it
    page_delay: float = 0.0  # seconds each API response waits (a slow source, for kill tests)

    def __post_init__(self) -> None:
        """Fail fast on a typo rather than silently serving the default behaviour."""
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {getattr(self, name)!r}")


@dataclass
class _Fault:
    prefix: str
    status: int
    remaining: int
    retry_after: str | None
    body: str


def _error(status: int, error: str, description: str | None = None, **headers: str) -> Response:
    payload = {"error": error}
    if description:
        payload["error_description"] = description
    return status, payload, dict(headers)


def _to_us(dt: datetime) -> int:
    """Microseconds since the epoch: integer keys keep ordering and equality exact."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(microseconds=1)


def _parse_ts(text: str) -> int:
    return _to_us(datetime.fromisoformat(text.strip()))


def _encode_cursor(updated_at: str, record_id: str) -> str:
    raw = json.dumps([updated_at, record_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, str]:
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    updated_at, record_id = json.loads(raw)
    return _parse_ts(updated_at), str(record_id)


def _parse_basic(header: str | None) -> tuple[str, str] | None:
    """Client credentials from a Basic header, form-url-decoded per RFC 6749 2.3.1."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")
    user, _, pw = decoded.partition(":")
    return unquote_plus(user), unquote_plus(pw)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class DemoSource:
    """The server plus its data; the Python methods are the operator's and the test's hands."""

    def __init__(
        self, options: DemoSourceOptions | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.options = options or DemoSourceOptions()
        self.host, self.port = host, port
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}
        self._ts: dict[str, int] = {}
        self._index: list[tuple[int, str]] = []  # sorted (updated_at_us, id)
        self._next_number = 1
        self._rng = random.Random(0)
        self._access: dict[str, float] = {}  # token -> monotonic expiry
        self._refresh: set[str] = set()
        if self.options.initial_refresh_token:
            self._refresh.add(self.options.initial_refresh_token)
        self._faults: list[_Fault] = []
        self._tombstones: list[tuple[int, str]] = []  # sorted (deleted_at_us, id)
        self._clock: int | None = None  # frozen time in microseconds, or None for the real one
        self.requests: deque[tuple[float, str, str, dict[str, Any]]] = deque(maxlen=10_000)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> DemoSource:
        """Bind and serve in a daemon thread so a test or benchmark can drive it in-process."""
        if self._server is not None:
            return self
        self._server = _Server((self.host, self.port), _Handler)
        self._server.source = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="demosource", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

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

    def _truncate(self, us: int) -> int:
        res = max(1, round(self.options.timestamp_resolution * 1_000_000))
        return us - us % res

    def _format(self, us: int) -> str:
        dt = _EPOCH + timedelta(microseconds=us)
        if self.options.timestamp_resolution < 1 or us % 1_000_000:
            return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return dt.strftime("%Y-%m-%dT%H:%M:%SZ")

    def _store(self, record: dict[str, Any], us: int) -> None:
        """Replace a record (copy-on-write, so readers may serialise it after the lock)."""
        rid = record["id"]
        old = self._ts.get(rid)
        if old is not None:
            del self._index[bisect_left(self._index, (old, rid))]
        record["updated_at"] = self._format(us)
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
        first = _to_us(start) if start else now - n * 250_000
        step = (now - first) // max(n, 1)
        with self._lock:
            for i in range(n):
                self._new_record({}, self._truncate(first + i * step))

    def insert(self, record: dict[str, Any] | None = None) -> dict[str, Any]:
        """Add a record (managed fields in `record` are ignored) stamped now."""
        fields = {k: v for k, v in (record or {}).items() if k not in _MANAGED}
        with self._lock:
            return copy.deepcopy(self._new_record(fields, self._now()))

    def _wallclock(self) -> int:
        return self._clock if self._clock is not None else time.time_ns() // 1000

    def _now(self) -> int:
        return self._truncate(self._wallclock())

    def now(self) -> datetime:
        """The source's clock (frozen or real), as an aware UTC datetime."""
        with self._lock:
            return _EPOCH + timedelta(microseconds=self._wallclock())

    def freeze_clock(self, at: datetime | None) -> None:
        """Stamp every change at ``at`` from now on (None: the real clock again)."""
        with self._lock:
            self._clock = _to_us(at) if at is not None else None

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
        """Forget every record and tombstone (numbering restarts), keep tokens and options."""
        with self._lock:
            self._records.clear()
            self._ts.clear()
            self._index.clear()
            self._tombstones.clear()
            self._next_number = 1
            self.requests.clear()

    def update(self, record_id: str, **fields: Any) -> dict[str, Any]:
        """Change a record; its version always grows even if the truncated timestamp does not."""
        if _MANAGED & fields.keys():
            raise ValueError("id, number, version and updated_at are managed by the source")
        with self._lock:
            old = self._records[record_id]
            if old.get("deleted"):
                raise KeyError(f"{record_id} is deleted")
            record = {**old, **copy.deepcopy(fields), "version": old["version"] + 1}
            self._store(record, max(self._now(), self._ts[record_id]))
            return copy.deepcopy(record)

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

    # -- the primitives of every listing style (ihub.demo.styles) --------------------------------

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
            rows = [{"id": rid, "deleted_at": self._format(us)} for us, rid in page]
            return rows, start + limit < len(self._tombstones)

    @staticmethod
    def parse_us(text: str) -> int:
        return _parse_ts(text)

    @staticmethod
    def us_of(record: dict[str, Any]) -> int:
        return _parse_ts(record["updated_at"])

    @staticmethod
    def cursor_of(record: dict[str, Any]) -> str:
        return _encode_cursor(record["updated_at"], record["id"])

    @staticmethod
    def decode_cursor(cursor: str) -> tuple[int, str]:
        return _decode_cursor(cursor)

    def revoke_refresh_tokens(self) -> None:
        """Simulate a revoked consent: every token issued so far stops working."""
        with self._lock:
            self._refresh.clear()
            self._access.clear()

    def set_refresh_token(self) -> str:
        """Mint a fresh refresh token, as an operator re-consenting would obtain."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._refresh.add(token)
        return token

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
                return _error(405, "invalid_request", "use POST", Allow="POST")
            status, payload, extra = self._token(body, headers)
            return status, payload, {**extra, "Cache-Control": "no-store", "Pragma": "no-cache"}
        if path == RECORDS_PATH or path.startswith(RECORDS_PATH + "/"):
            if method != "GET":
                return _error(405, "invalid_request", "use GET", Allow="GET")
            return self._slow(self._api(path, parts.query, headers))
        if path in demostyles.STYLE_PATHS:
            return self._slow(self._styled(method, path, parts.query, headers, body))
        return _error(404, "not_found")

    def _slow(self, response: Response) -> Response:
        if self.options.page_delay > 0:
            time.sleep(self.options.page_delay)
        return response

    def _styled(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> Response:
        allowed = demostyles.STYLE_PATHS[path]
        if method != allowed:
            return _error(405, "invalid_request", f"use {allowed}", Allow=allowed)
        with self._lock:
            refused = self._refuse(headers)
        if refused is not None:
            return refused
        params = {k: v[0] for k, v in parse_qs(query).items()}
        self._log(method, path, params, body)
        try:
            return demostyles.handle(self, path, params, body)
        except (ValueError, TypeError, KeyError, binascii.Error) as exc:
            return _error(400, "invalid_request", f"bad request: {exc}")

    def _log(self, method: str, path: str, params: dict[str, str], body: bytes) -> None:
        entry: dict[str, Any] = dict(params)
        if body:
            with contextlib.suppress(ValueError):
                entry["__body__"] = json.loads(body)
        self.requests.append((time.monotonic(), method, path, entry))

    def _refuse(self, headers: dict[str, str]) -> Response | None:
        """The 401 for a missing or bad bearer token; None when the request may proceed."""
        if not self.options.require_auth or self._bearer_ok(headers.get("authorization")):
            return None
        self.counters["api_401"] += 1
        challenge = 'Bearer realm="ihub-demo", error="invalid_token"'
        return _error(
            401,
            "invalid_token",
            "access token missing, expired or revoked",
            **{"WWW-Authenticate": challenge},
        )

    def _token(self, body: bytes, headers: dict[str, str]) -> Response:
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        with self._lock:
            if not self._client_ok(form, headers.get("authorization")):
                self.counters["invalid_client"] += 1
                return _error(
                    401,
                    "invalid_client",
                    "client authentication failed",
                    **{"WWW-Authenticate": 'Basic realm="ihub-demo"'},
                )
            grant = form.get("grant_type")
            if grant == "client_credentials":
                return self._grant_client_credentials(form)
            if grant == "refresh_token":
                return self._grant_refresh(form)
            if grant == "password":
                return self._grant_password(form)
            if not grant:
                return _error(400, "invalid_request", "grant_type is required")
            return _error(400, "unsupported_grant_type", f"grant_type {grant!r} is not supported")

    def _client_ok(self, form: dict[str, str], authorization: str | None) -> bool:
        basic = _parse_basic(authorization)
        style = self.options.client_auth
        if basic is not None and style in ("basic", "any"):
            creds = basic
        elif basic is None and style in ("body", "any") and "client_secret" in form:
            creds = (form.get("client_id", ""), form["client_secret"])
        else:
            return False
        return _same(creds[0], self.options.client_id) and _same(
            creds[1], self.options.client_secret
        )

    def _issue(self, *, refresh: bool, scope: str | None = None) -> Response:
        now = time.monotonic()
        if len(self._access) > 10_000:
            self._access = {t: exp for t, exp in self._access.items() if exp > now}
        access = secrets.token_urlsafe(32)
        self._access[access] = now + self.options.token_lifetime
        payload: dict[str, Any] = {"access_token": access, "token_type": "Bearer"}
        lifetime = max(1, math.ceil(self.options.token_lifetime))
        if self.options.expires_in_style == "int":
            payload["expires_in"] = lifetime
        elif self.options.expires_in_style == "str":
            payload["expires_in"] = str(lifetime)
        if refresh:
            payload["refresh_token"] = secrets.token_urlsafe(32)
            self._refresh.add(payload["refresh_token"])
        if scope:
            payload["scope"] = scope
        return 200, payload, {}

    def _invalid_grant(self, description: str) -> Response:
        self.counters["invalid_grant"] += 1
        return _error(400, "invalid_grant", description)

    def _grant_client_credentials(self, form: dict[str, str]) -> Response:
        self.counters["client_credentials_grants"] += 1
        refresh = self.options.issue_refresh_token_for_client_credentials
        return self._issue(refresh=refresh, scope=form.get("scope"))

    def _grant_refresh(self, form: dict[str, str]) -> Response:
        self.counters["refresh_grants"] += 1
        token = form.get("refresh_token", "")
        if token not in self._refresh:
            return self._invalid_grant("refresh token is invalid, expired, revoked or reused")
        if self.options.rotate_refresh_tokens:
            self._refresh.discard(token)
        return self._issue(refresh=self.options.rotate_refresh_tokens, scope=form.get("scope"))

    def _grant_password(self, form: dict[str, str]) -> Response:
        self.counters["password_grants"] += 1
        user_ok = _same(form.get("username", ""), self.options.username)
        if not (_same(form.get("password", ""), self.options.password) and user_ok):
            return self._invalid_grant("bad resource owner credentials")
        return self._issue(refresh=True, scope=form.get("scope"))

    def _bearer_ok(self, authorization: str | None) -> bool:
        if not authorization or not authorization.lower().startswith("bearer "):
            return False
        expiry = self._access.get(authorization[7:].strip())
        return expiry is not None and expiry > time.monotonic()

    def _api(self, path: str, query: str, headers: dict[str, str]) -> Response:
        with self._lock:
            refused = self._refuse(headers)
            if refused is not None:
                return refused
            if path != RECORDS_PATH:
                record = self._records.get(path[len(RECORDS_PATH) + 1 :])
                return (200, record, {}) if record else _error(404, "not_found")
        params = {k: v[0] for k, v in parse_qs(query).items()}
        self._log("GET", path, params, b"")
        try:
            return self._page(params)
        except (ValueError, TypeError, binascii.Error) as exc:
            return _error(400, "invalid_request", f"bad query parameter: {exc}")

    def _page(self, params: dict[str, str]) -> Response:
        """Keyset page over (updated_at, id): ``cursor`` continues after a row, ``after_id``
        (with ``updated_since``) starts strictly after (updated_since, after_id); ``offset`` or
        ``page`` (1-based) switch to positional paging. ``X-Total-Count`` has the total."""
        since = _parse_ts(params["updated_since"]) if "updated_since" in params else None
        limit = min(int(params.get("limit", 100)), self.options.page_size_max)
        offset = int(params["offset"]) if "offset" in params else None
        if "page" in params:
            offset = (int(params["page"]) - 1) * limit
        if limit < 1 or (offset is not None and offset < 0):
            raise ValueError("limit must be >= 1, offset >= 0 and page >= 1")
        after = None
        if offset is None and params.get("cursor"):
            after = _decode_cursor(params["cursor"])
        elif offset is None and params.get("after_id") and since is not None:
            after = (since, params["after_id"])
        total, data, more = self.listing(since=since, after=after, offset=offset or 0, limit=limit)
        headers = {"X-Total-Count": str(total)}
        if offset is not None:
            return 200, {"data": data, "total": total, "offset": offset, "limit": limit}, headers
        last = data[-1] if data and more else None
        cursor = _encode_cursor(last["updated_at"], last["id"]) if last else None
        return 200, {"data": data, "next_cursor": cursor, "total": total}, headers


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    source: DemoSource


class _Handler(BaseHTTPRequestHandler):
    """Thin HTTP/1.1 adapter (keep-alive, so benchmarks measure the source, not TCP setup)."""

    protocol_version = "HTTP/1.1"
    server_version = "ihub-demosource/1.0"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    timeout = 30
    server: _Server

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True  # the unread body would corrupt the next request
            self._send(*_error(400, "invalid_request", "bad Content-Length"))
            return
        body = self.rfile.read(length) if length > 0 else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            response = self.server.source._handle(method, self.path, headers, body)
        except Exception:  # a bug in the source must surface as a 500, not a dropped connection
            log.exception("demo source failed on %s %s", method, urlsplit(self.path).path)
            response = _error(500, "server_error")
        self._send(*response)

    def _send(self, status: int, payload: Any, headers: dict[str, str]) -> None:
        if isinstance(payload, str):
            ctype = "text/html" if payload.lstrip().startswith("<") else "text/plain"
            data, ctype = payload.encode(), ctype + "; charset=utf-8"
        else:
            data, ctype = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Path only: query strings and headers may carry tokens, which must never be logged.
        log.debug("%s %s -> %s", self.command, urlsplit(self.path).path, code)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""


def _parser() -> argparse.ArgumentParser:
    """One flag per DemoSourceOptions field (e.g. --token-lifetime), so the two never drift."""
    p = argparse.ArgumentParser(prog="python -m ihub.demo.source", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8700)
    p.add_argument("--seed", type=int, default=0, help="records to create at start")
    p.add_argument("--mutate-every", type=float, default=0.0, help="seconds; 0 = never")
    p.add_argument("--mutate-count", type=int, default=5, help="changes per mutation round")
    p.add_argument("--random-seed", type=int, default=None)
    for f in fields(DemoSourceOptions):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = str if f.default is None else type(f.default)
            p.add_argument(flag, type=kind, default=f.default, choices=_CHOICES.get(f.name))
    return p


def main(argv: list[str] | None = None) -> None:
    """Run the source standalone so other processes (benchmarks, docker) can use it."""
    a = _parser().parse_args(argv)
    options = DemoSourceOptions(**{f.name: getattr(a, f.name) for f in fields(DemoSourceOptions)})
    source = DemoSource(options, host=a.host, port=a.port).start()
    source.seed(a.seed)
    print(
        f"demo source on {source.url} (token endpoint {source.token_url}, "
        f"client_id={options.client_id}); Ctrl-C stops",
        flush=True,
    )
    rng = random.Random(a.random_seed)
    try:
        while True:
            time.sleep(a.mutate_every if a.mutate_every > 0 else 3600)
            if a.mutate_every > 0:
                source.mutate_random(a.mutate_count, rng)
    except KeyboardInterrupt:
        pass
    finally:
        source.stop()


if __name__ == "__main__":
    main()
