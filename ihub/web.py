"""The status page and its JSON API: what an operator opens first, built on the stdlib alone.

wsgiref with a thread per request, so one slow query never blocks ``/healthz``. Record ids,
messages and payloads come from third parties: every value is HTML-escaped before it is shown,
and the Content-Security-Policy forbids scripts outright (the page needs none).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from html import escape
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from ihub.report import collect_status
from models import queue
from models.schema import IntegrationStatus, RecordStatus
from pipeline.timefmt import utcnow

STATUSES = tuple(s.value for s in RecordStatus)
REFRESH_SECONDS = 5
DEAD_ON_PAGE = 50
LONG_FIELDS = ("message", "payload", "traceback")  # shown below the table, in <pre>
HTML, JSON, TEXT = "text/html; charset=utf-8", "application/json", "text/plain; charset=utf-8"
Response = tuple[str, str, bytes]  # status line, content type, body

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#222}
header{background:#1f2937;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:center}
header h1{margin:0;font-size:20px}header a{color:#93c5fd}main{padding:16px 20px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px 16px;min-width:300px}
.card h2{margin:0 0 6px;font-size:16px}.paused{border:2px solid #dc2626}
.alert{color:#b91c1c;font-weight:bold}.ok{color:#15803d;font-weight:bold}.muted{color:#666}
.badge{display:inline-block;border-radius:10px;padding:1px 8px;margin:2px;color:#fff;font-size:12px}
.pending{background:#6b7280}.processing{background:#2563eb}.retrying{background:#d97706}
.done{background:#16a34a}.dead{background:#dc2626}
table{border-collapse:collapse;background:#fff;width:100%}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
pre{background:#fff;border:1px solid #ddd;padding:10px;overflow:auto;white-space:pre-wrap}
"""


def make_app(
    database_url: str, broker_url: str | None, *, flower_url: str | None = None
) -> WSGIApplication:
    """The WSGI app; it holds no state, every request reads the database afresh."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method in ("GET", "HEAD"):
            status, content_type, body = _route(database_url, broker_url, flower_url, environ)
        else:
            status, content_type, body = "405 Method Not Allowed", TEXT, b"method not allowed"
        start_response(
            status,
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                ("X-Content-Type-Options", "nosniff"),
                ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
            ],
        )
        return [b""] if method == "HEAD" else [body]

    return app


def _route(
    database_url: str, broker_url: str | None, flower_url: str | None, environ: WSGIEnvironment
) -> Response:
    path = environ.get("PATH_INFO") or "/"
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/healthz":
        return "200 OK", TEXT, b"ok"
    if path == "/":
        status = collect_status(database_url, broker_url)
        dead = queue.list_dead(database_url, limit=DEAD_ON_PAGE)
        return "200 OK", HTML, render_index(status, dead, flower_url).encode()
    if path == "/api/status":
        return _json(collect_status(database_url, broker_url))
    if path == "/api/dead":
        integration = query.get("integration", [""])[0] or None
        try:
            limit = min(max(int(query.get("limit", ["100"])[0]), 1), 1000)
        except ValueError:
            return "400 Bad Request", TEXT, b"limit must be an integer"
        return _json(queue.list_dead(database_url, integration=integration, limit=limit))
    tail = path.removeprefix("/dead/")
    if tail != path and tail.isascii() and tail.isdigit():
        dead = queue.show_dead(database_url, int(tail))
        if dead is not None:
            return "200 OK", HTML, render_dead(dead).encode()
    return "404 Not Found", TEXT, b"not found"


def _json(value: Any) -> Response:
    return "200 OK", JSON, json.dumps(value, default=str, indent=1).encode()


def render_index(status: dict[str, Any], dead: list[dict[str, Any]], flower: str | None) -> str:
    cards = "".join(_card(item) for item in status["integrations"])
    rows = "".join(_dead_row(d) for d in dead)
    table = (
        "<table><tr><th>Time</th><th>Integration</th><th>Record</th><th>Error</th>"
        f"<th>Message</th><th>Attempts</th></tr>{rows}</table>"
        if dead
        else '<p class="muted">No dead letters.</p>'
    )
    body = (
        f'<section class="summary"><p>All records: {_badges(status["totals"])}</p>'
        f"<p>Queue depth: {_queues(status['queues'])}</p></section>"
        f'<div class="cards">{cards or "<p class=muted>No integrations yet.</p>"}</div>'
        f"<h2>Latest dead letters</h2>{table}"
    )
    links = f'<a href="{escape(flower)}">Flower</a>' if _is_http(flower) else ""
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
    return _page(
        "ihub", body, head=refresh, links=links, note=f"generated {status['generated_at']}"
    )


def _card(item: dict[str, Any]) -> str:
    paused = item["status"] == IntegrationStatus.REAUTH_REQUIRED
    state = (
        f'<p class="alert">PAUSED: re-authorisation required<br>'
        f"{_e(item['status_reason'] or 'no reason recorded')}</p>"
        if paused
        else f'<p class="ok">{_e(item["status"])}</p>'
    )
    mark = item["watermark"]
    watermark = f"{_e(mark['updated'])} / {_e(mark['id'])}" if mark["updated"] else "none yet"
    run = item["last_run"]
    last_run = f"#{run['id']} {_e(run['status'])}, staged {run['staged']}" if run else "none"
    return (
        f'<div class="card{" paused" if paused else ""}"><h2>{_e(item["name"])}</h2>{state}'
        f"<div>Watermark: {watermark}</div>"
        f"<div>Last success: {_when(item['last_success_at'])}</div>"
        f"<div>Last fetch: {_when(item['last_fetch_at'])}</div>"
        f"<div>Last run: {last_run}</div><div>{_badges(item['counts'])}</div></div>"
    )


def _badges(counts: dict[str, int]) -> str:
    return "".join(f'<span class="badge {s}">{s} {int(counts.get(s, 0))}</span>' for s in STATUSES)


def _queues(depths: dict[str, int] | None) -> str:
    if depths is None:
        return '<span class="muted">unavailable</span>'
    return ", ".join(f"{_e(name)}: {int(n)}" for name, n in depths.items())


def _dead_row(dead: dict[str, Any]) -> str:
    message = dead["message"] or ""
    short = message if len(message) <= 120 else message[:119] + "…"
    return (
        f"<tr><td>{_e(dead['last_failed_at'])}</td><td>{_e(dead['integration'])}</td>"
        f'<td><a href="/dead/{int(dead["row_id"])}">{_e(dead["record_id"])}</a></td>'
        f"<td>{_e(dead['error_class'])}</td><td>{_e(short)}</td>"
        f"<td>{int(dead['attempts'])}</td></tr>"
    )


def render_dead(dead: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>"
        for k, v in dead.items()
        if k not in LONG_FIELDS
    )
    payload = json.dumps(dead["payload"], indent=2, sort_keys=True, ensure_ascii=False, default=str)
    body = (
        f"<h2>Dead letter {int(dead['row_id'])}</h2><table>{rows}</table>"
        f"<h3>Message</h3><pre>{_e(dead['message'])}</pre>"
        f"<h3>Payload</h3><pre>{_e(payload)}</pre>"
        f"<h3>Traceback</h3><pre>{_e(dead.get('traceback') or 'none recorded')}</pre>"
    )
    return _page(f"ihub: dead letter {int(dead['row_id'])}", body, links='<a href="/">status</a>')


def _page(title: str, body: str, *, head: str = "", links: str = "", note: str = "") -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{head}'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>ihub</h1>{links}<span class="muted">{_e(note)}</span></header>'
        f"<main>{body}</main></body></html>"
    )


def _e(value: Any) -> str:
    return escape("" if value is None else str(value))


def _is_http(url: str | None) -> bool:
    """Only http(s) links: a ``javascript:`` URL in configuration must not become a link."""
    return bool(url) and str(url).lower().startswith(("http://", "https://"))


def _when(iso: str | None) -> str:
    if not iso:
        return '<span class="muted">never</span>'
    seconds = int((utcnow() - datetime.fromisoformat(iso.removesuffix("Z"))).total_seconds())
    return f"{_e(iso)} ({_age(seconds)} ago)"


def _age(seconds: int) -> str:
    for unit, name in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= unit:
            return f"{seconds // unit}{name}"
    return f"{max(seconds, 0)}s"


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """No access log: the page refreshes itself every few seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _make_server(
    database_url: str, broker_url: str | None, host: str, port: int, flower_url: str | None
) -> WSGIServer:
    app = make_app(database_url, broker_url, flower_url=flower_url)
    return make_server(
        host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )


@dataclass
class ServerHandle:
    """A status server running in a daemon thread; ``stop()`` frees the port."""

    url: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(
    database_url: str,
    broker_url: str | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8780,
    flower_url: str | None = None,
) -> ServerHandle:
    """Serve in the background (tests, ``ihub demo``); port 0 picks a free port."""
    server = _make_server(database_url, broker_url, host, port, flower_url)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.1,), name="ihub-web", daemon=True
    )
    thread.start()
    bound = server.server_address[1]
    return ServerHandle(f"http://{host}:{bound}", bound, server, thread)


def serve_forever(
    database_url: str,
    broker_url: str | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8780,
    flower_url: str | None = None,
) -> None:
    """Blocking, for ``ihub web``: serves until the process is interrupted."""
    with _make_server(database_url, broker_url, host, port, flower_url) as server:
        server.serve_forever()
