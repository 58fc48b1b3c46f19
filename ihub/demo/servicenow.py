"""A ServiceNow-style demo target: the Table API behind its own OAuth 2.0 token endpoint.

``POST /api/now/table/{table}`` creates a record and assigns its ``sys_id``; ``GET`` searches
with ``sysparm_query`` (``field=value`` terms joined by ``^``), ``sysparm_fields`` and
``sysparm_limit``; ``PATCH``/``PUT``/``DELETE`` address ``/api/now/table/{table}/{sys_id}``.
Errors read as ServiceNow's do: ``{"error": {"message", "detail"}, "status": "failure"}``.

The token endpoint (grants, rotation, revocation, expiry) is a ``DemoSource`` used for that
alone. Knobs reproduce what makes such targets hard: a share of writes whose answer is lost
after the commit (a 504 or a reset connection), a request rate above which it answers 429 with
Retry-After, mandatory fields, an outage (503), and ``Idempotency-Key`` honoured on creates.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import socket
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ihub.demo.source import TOKEN_PATH, DemoSource, DemoSourceOptions

TABLE_PATH = "/api/now/table/"
RESET = "reset"  # a pseudo status: close the connection without an answer

Response = tuple[int | str, Any, dict[str, str]]


@dataclass
class ServiceNowOptions:
    lose_after_commit: float = 0.0  # share of writes committed whose answer is lost
    max_rps: float | None = None  # above this many requests a second: 429 + Retry-After
    throttle_every: int | None = None  # every n-th API request: 429 + Retry-After (any speed)
    mandatory: tuple[str, ...] = ()  # fields a record must have, non-empty
    honour_idempotency_key: bool = True
    down: bool = False  # every API request answers 503
    write_delay: float = 0.0  # seconds a create waits before it commits (races in tests)
    slow_answer: float = 3.0  # seconds a "slow" lost answer waits after the commit
    require_auth: bool = True
    seed: int = 0


def _failure(status: int, message: str, detail: str = "", **headers: str) -> Response:
    return status, {"error": {"message": message, "detail": detail}, "status": "failure"}, headers


def parse_query(query: str) -> list[tuple[str, str]]:
    """``a=1^b=2`` as [(a, 1), (b, 2)]; only equality terms joined by AND are understood."""
    terms = []
    for term in filter(None, query.split("^")):
        field, op, value = term.partition("=")
        if not op or term.startswith(("OR", "NQ")) or not field.isidentifier():
            raise ValueError(f"unsupported sysparm_query term {term!r}")
        terms.append((field, value))
    return terms


class ServiceNowTarget:
    """The server and its tables; the Python methods are the test's hands."""

    def __init__(
        self,
        options: ServiceNowOptions | None = None,
        auth: DemoSourceOptions | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.options = options or ServiceNowOptions()
        self.authority = DemoSource(
            auth or DemoSourceOptions(client_id="servicenow-client", client_secret="sn-secret")
        )
        self.host, self.port = host, port
        self.counters: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._tables: dict[str, dict[str, dict[str, Any]]] = {}
        self._replays: dict[str, tuple[str, dict[str, Any]]] = {}  # idempotency key → created
        self._recent: deque[float] = deque()
        self._rng = random.Random(self.options.seed)
        self._lose_next: list[str] = []  # "504" or "reset": the next writes' answers to lose
        self.idempotency_keys: list[str] = []  # every Idempotency-Key a create carried
        self._server: ThreadingHTTPServer | None = None

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> ServiceNowTarget:
        server = ThreadingHTTPServer((self.host, self.port), _Handler)
        server.daemon_threads = True
        server.target = self  # type: ignore[attr-defined]
        self._server, self.port = server, server.server_address[1]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ServiceNowTarget:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATH

    def table_url(self, table: str) -> str:
        return self.url + TABLE_PATH + table

    # -- the test's hands -------------------------------------------------------------------
    def records(self, table: str) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(list(self._tables.get(table, {}).values()))

    def by_field(
        self, table: str, field: str = "correlation_id"
    ) -> dict[str, list[dict[str, Any]]]:
        """Records grouped by a field's value: a list longer than one is a duplicate."""
        grouped: dict[str, list[dict[str, Any]]] = {}
        for record in self.records(table):
            grouped.setdefault(str(record.get(field)), []).append(record)
        return grouped

    def remove(self, table: str, sys_id: str) -> None:
        """Delete a record behind ihub's back (an operator on the target)."""
        with self._lock:
            self._tables.get(table, {}).pop(sys_id, None)

    def lose_next(self, *how: str) -> None:
        """Commit the next writes, then answer each with a 504, a reset connection, or
        ("slow") only after ``slow_answer`` seconds."""
        with self._lock:
            self._lose_next += list(how)

    def set(self, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(self.options, name, value)

    # -- the API ----------------------------------------------------------------------------
    def handle(self, method: str, raw: str, headers: dict[str, str], body: bytes) -> Response:
        parts = urlsplit(raw)
        if parts.path == TOKEN_PATH:
            self.counters["token_requests"] += 1
            return self.authority._handle(method, raw, headers, body)
        if not parts.path.startswith(TABLE_PATH):
            return _failure(404, "Invalid URL", parts.path)
        table, _, sys_id = parts.path[len(TABLE_PATH) :].partition("/")
        with self._lock:
            self.counters["api_requests"] += 1
            refused = self._refuse(headers)
            if refused is not None:
                return refused
            params = {k: v[0] for k, v in parse_qs(parts.query).items()}
            try:
                status, payload, extra = self._route(
                    method, table, unquote(sys_id), params, body, headers
                )
            except ValueError as exc:
                return _failure(400, "Invalid request", str(exc))
            if method != "GET" and 200 <= int(status) < 300:
                lost = self._lose()
                if lost == "slow":  # answered after the client gave up waiting
                    self.counters["lost_responses"] += 1
                    self._lock.release()
                    time.sleep(self.options.slow_answer)
                    self._lock.acquire()
                elif lost:
                    self.counters["lost_responses"] += 1
                    return (
                        (RESET, None, {}) if lost == "reset" else _failure(504, "Gateway Timeout")
                    )
            return status, payload, extra

    def _refuse(self, headers: dict[str, str]) -> Response | None:
        if self.options.down:
            self.counters["down_503"] += 1
            return _failure(503, "Service Unavailable", "instance is down for maintenance")
        if self.options.require_auth:
            with self.authority._lock:
                ok = self.authority.tokens.bearer_ok(headers.get("authorization"))
            if not ok:
                self.counters["api_401"] += 1
                return (
                    401,
                    {"error": {"message": "User Not Authenticated"}},
                    {"WWW-Authenticate": 'Bearer realm="servicenow-demo", error="invalid_token"'},
                )
        if self._throttled():
            self.counters["throttled"] += 1
            return _failure(429, "Too Many Requests", "rate limit exceeded", **{"Retry-After": "1"})
        return None

    def _throttled(self) -> bool:
        every = self.options.throttle_every
        if every and self.counters["api_requests"] % every == 0:
            return True
        if not self.options.max_rps:
            return False
        now = time.monotonic()
        while self._recent and self._recent[0] < now - 1.0:
            self._recent.popleft()
        if len(self._recent) >= self.options.max_rps:
            return True
        self._recent.append(now)
        return False

    def _lose(self) -> str | None:
        if self._lose_next:
            return self._lose_next.pop(0)
        if self.options.lose_after_commit and self._rng.random() < self.options.lose_after_commit:
            return self._rng.choice(("504", "reset"))
        return None

    def _route(
        self,
        method: str,
        table: str,
        sys_id: str,
        params: dict[str, str],
        body: bytes,
        headers: dict[str, str],
    ) -> Response:
        rows = self._tables.setdefault(table, {})
        if method == "GET" and not sys_id:
            return 200, {"result": self._search(rows, params)}, {}
        if method == "POST" and not sys_id:
            if self.options.write_delay:  # the lock is released while waiting, as a slow
                self._lock.release()  # database would let other requests in
                time.sleep(self.options.write_delay)
                self._lock.acquire()
            return self._create(table, rows, _json(body), headers.get("idempotency-key"))
        if sys_id not in rows:
            return _failure(404, "No Record found", "Record doesn't exist or ACL restricts it")
        if method == "GET":
            return 200, {"result": rows[sys_id]}, {}
        if method == "DELETE":
            del rows[sys_id]
            self.counters["deletes"] += 1
            return 204, "", {}
        if method in ("PATCH", "PUT"):
            return self._update(rows[sys_id], _json(body))
        return _failure(405, "Method not Supported", method)

    def _search(self, rows: dict[str, dict[str, Any]], params: dict[str, str]) -> list[Any]:
        self.counters["searches"] += 1
        terms = parse_query(params.get("sysparm_query", ""))
        found = [r for r in rows.values() if all(str(r.get(f)) == v for f, v in terms)]
        found = found[: int(params.get("sysparm_limit", 10000))]
        wanted = [f for f in params.get("sysparm_fields", "").split(",") if f]
        return [{f: r.get(f) for f in wanted} if wanted else r for r in found]

    def _missing(self, record: dict[str, Any], *, creating: bool) -> str | None:
        for field in self.options.mandatory:
            if (creating or field in record) and record.get(field) in (None, ""):
                return field
        return None

    def _create(
        self, table: str, rows: dict[str, dict[str, Any]], record: dict[str, Any], key: str | None
    ) -> Response:
        if key:
            self.idempotency_keys.append(key)
        if key and self.options.honour_idempotency_key and key in self._replays:
            self.counters["idempotent_replays"] += 1
            replay_table, replayed = self._replays[key]
            if replay_table == table and replayed["sys_id"] in rows:
                return 201, {"result": rows[replayed["sys_id"]]}, {}
        missing = self._missing(record, creating=True)
        if missing:
            self.counters["rejected"] += 1
            return _failure(
                400,
                f"Mandatory field missing: {missing}",
                f"Data Policy Exception: {missing} is mandatory",
            )
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        created = {
            **record,
            "sys_id": uuid.uuid4().hex,
            "sys_created_on": stamp,
            "sys_updated_on": stamp,
        }
        rows[created["sys_id"]] = created
        if key:
            self._replays[key] = (table, created)
        self.counters["creates"] += 1
        return 201, {"result": created}, {}

    def _update(self, current: dict[str, Any], changes: dict[str, Any]) -> Response:
        missing = self._missing(changes, creating=False)
        if missing:
            self.counters["rejected"] += 1
            return _failure(
                400,
                f"Mandatory field missing: {missing}",
                f"Data Policy Exception: {missing} is mandatory",
            )
        changes = {k: v for k, v in changes.items() if k not in ("sys_id", "sys_created_on")}
        current.update(changes, sys_updated_on=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()))
        self.counters["updates"] += 1
        return 200, {"result": current}, {}


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        raise ValueError("the body is not JSON") from None
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ihub-servicenow-demo/1.0"
    disable_nagle_algorithm = True
    timeout = 30

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            status, payload, extra = self.server.target.handle(  # type: ignore[attr-defined]
                method, self.path, headers, body
            )
        except Exception:  # a bug in the demo must surface as a 500, not a dropped connection
            status, payload, extra = _failure(500, "Internal Server Error")
        if status == RESET:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            return
        data = b"" if payload in ("", None) else json.dumps(payload).encode()
        try:
            self.send_response(int(status))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up waiting (its timeout): nobody to answer
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: paths and headers may carry tokens."""
