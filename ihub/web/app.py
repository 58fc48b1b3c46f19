"""The status page's WSGI app: routing, the gate (Host, auth), CSRF and security headers.

The app keeps no state: every request reads the database (and the broker's queue lengths)
afresh, so any number of ``ihub web`` processes show the same thing and the page never depends
on Flower. The gate (``ihub.web.gate``) answers before anything else, and before the body is
read. Requeue is a POST carrying a CSRF token (an HMAC of a SameSite=Strict cookie under a server
key), from the same origin, and goes through a confirmation page first.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from ihub import report
from ihub.web import actions, api, metrics, pages, pages_dead
from ihub.web.api import HTML, TEXT, BadRequest, Request, Response, html_response
from ihub.web.gate import Gate, HostPolicy
from models import dashboard
from models.dashboard import DeadFilter
from pipeline.timefmt import utcnow

log = logging.getLogger(__name__)
METRICS = "text/plain; version=0.0.4; charset=utf-8"
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
COOKIE = "ihub_csrf"
MAX_BODY = 64 << 10  # a requeue form: a page of row ids and a filter


@dataclass(frozen=True)
class Config:
    database_url: str
    broker_url: str | None
    flower_url: str | None = None
    auth: tuple[str, str] | None = None
    csrf_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    clock: Callable[[], datetime] = utcnow
    publish: actions.Publish | None = None
    due_in: float = 300.0
    hosts: HostPolicy | None = field(default_factory=lambda: HostPolicy("127.0.0.1"))

    @property
    def gate(self) -> Gate:
        return Gate(self.hosts, self.auth)


def make_app(database_url: str, broker_url: str | None, **options: Any) -> WSGIApplication:
    """The WSGI app; options are the fields of ``Config`` (auth, clock, publish, ...)."""
    config = Config(database_url, broker_url, **options)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        response = handle(config, environ)
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "same-origin"),
            ("Content-Security-Policy", CSP),
            *response.headers,
        ]
        start_response(response.status, headers)
        return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [response.body]

    return app


def handle(config: Config, environ: WSGIEnvironment) -> Response:
    path = environ.get("PATH_INFO") or "/"
    refused = config.gate.refusal(path, environ.get("HTTP_HOST"), environ.get("HTTP_AUTHORIZATION"))
    if refused is not None:
        return refused
    try:
        request = _request(environ)
    except BadRequest as exc:
        return Response("413 Content Too Large", TEXT, str(exc).encode())
    cookie = request.cookie or secrets.token_urlsafe(32)
    csrf = _csrf_token(config, cookie)
    try:
        if request.method in ("GET", "HEAD"):
            response = _get(config, request, csrf)
        elif request.method == "POST" and request.path == "/dead/requeue":
            response = _post_requeue(config, request, csrf)
        else:
            response = Response("405 Method Not Allowed", TEXT, b"method not allowed")
    except BadRequest as exc:
        response = Response("400 Bad Request", TEXT, str(exc).encode())
    except Exception:
        log.exception("status page: %s %s failed", request.method, request.path)
        response = Response("500 Internal Server Error", TEXT, b"internal error (see the log)")
    if request.cookie is None and response.content_type == HTML:
        response.headers.append(
            ("Set-Cookie", f"{COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Strict")
        )
    return response


def _get(config: Config, request: Request, csrf: str) -> Response:
    db, path, now = config.database_url, request.path, config.clock()
    if path == "/healthz":
        return Response("200 OK", TEXT, b"ok")
    if path == "/":
        hours = api.number(request, "hours", 24, api.MAX_HOURS)
        status = report.collect_status(db, config.broker_url, now=now, hours=hours)
        return html_response(pages.dashboard(status, flower_url=config.flower_url, hours=hours))
    if path == "/dead":
        return _dead_page(config, request, csrf)
    if path == "/metrics":
        return Response("200 OK", METRICS, metrics.render(db, config.broker_url, config.clock))
    if path.startswith("/dead/") and path[6:].isascii() and path[6:].isdigit():
        dead = report.dead_letter(db, int(path[6:]))
        if dead is not None:
            return html_response(pages_dead.dead_detail(dead, csrf, flower_url=config.flower_url))
    if path.startswith("/api"):
        return api.handle(request, db, config.broker_url, now)
    return Response("404 Not Found", TEXT, b"not found")


def _dead_page(config: Config, request: Request, csrf: str) -> Response:
    flt = api.dead_filter(request)
    offset = int(api.number(request, "offset", 0, 10**9, integer=True, low=0))
    found = dashboard.dead_letters(config.database_url, flt, limit=api.DEAD_PAGE, offset=offset)
    requeued = request.arg("requeued")
    notice = f"{int(requeued)} dead letter(s) requeued." if requeued.isdigit() else ""
    if request.arg("unpublished").isdigit():
        notice += " The broker did not answer: the reconciler will publish them."
    facets = dashboard.dead_facets(config.database_url)
    html = pages_dead.dead_list(
        found,
        flt,
        facets,
        csrf,
        offset=offset,
        limit=api.DEAD_PAGE,
        notice=notice,
        flower_url=config.flower_url,
    )
    return html_response(html)


def _post_requeue(config: Config, request: Request, csrf: str) -> Response:
    if (
        not _same_origin(request)
        or not hmac.compare_digest(request.arg("csrf", form=True).encode(), csrf.encode())
        or request.cookie is None
    ):
        return Response("403 Forbidden", TEXT, b"cross-site request refused (CSRF token)")
    scope = request.arg("scope", form=True)
    flt = api.dead_filter(request, form=True)
    if scope == "selected":
        raw = request.form.get("row_id", [])
        if not all(v.isascii() and v.isdigit() for v in raw):
            raise BadRequest("row_id must be integers")
        row_ids: list[int] | None = [int(v) for v in raw]
        target = DeadFilter()
    elif scope == "filter":
        row_ids, target = None, flt
    else:
        raise BadRequest("scope must be 'selected' or 'filter'")
    kwargs: dict[str, Any] = {
        "row_ids": row_ids,
        "flt": target,
        "everything": scope == "filter",
        "due_in": config.due_in,
    }
    if scope == "selected" and not row_ids:
        return html_response(
            pages_dead.confirm(scope=scope, row_ids=[], flt=flt, count=0, csrf=csrf)
        )
    if request.arg("confirm", form=True) != "yes":
        would = actions.requeue(config.database_url, dry_run=True, **kwargs)
        count = len(would.row_ids)
        html = pages_dead.confirm(
            scope=scope, row_ids=row_ids or [], flt=flt, count=count, csrf=csrf
        )
        return html_response(html)
    done = actions.requeue(config.database_url, publish=config.publish, **kwargs)
    extra = {"requeued": str(len(done.row_ids))}
    if not done.published:
        extra["unpublished"] = "1"
    location = "/dead?" + pages_dead.filter_query(flt, **extra)
    return Response("303 See Other", TEXT, b"requeued", [("Location", location)])


def _same_origin(request: Request) -> bool:
    """Browsers send Origin on POST (and Sec-Fetch-Site); when present they must be ours."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc == request.headers.get("host", "")


def _csrf_token(config: Config, cookie: str) -> str:
    return hmac.new(config.csrf_key, cookie.encode(), hashlib.sha256).hexdigest()


def _request(environ: WSGIEnvironment) -> Request:
    method = environ.get("REQUEST_METHOD", "GET")
    form: dict[str, list[str]] = {}
    if method == "POST":
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > MAX_BODY:
            raise BadRequest("request body too large")
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        form = parse_qs(body.decode("utf-8", "replace"))
    headers = {
        key[5:].replace("_", "-").lower(): value
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    cookies = SimpleCookie()
    try:
        cookies.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header from another app on the same host
        cookies = SimpleCookie()
    cookie = cookies[COOKIE].value if COOKIE in cookies else None
    return Request(
        method,
        environ.get("PATH_INFO") or "/",
        parse_qs(environ.get("QUERY_STRING", "")),
        form,
        headers,
        cookie if cookie and len(cookie) >= 32 else None,
    )
