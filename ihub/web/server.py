"""The status page's server: waitress, with every wait and every buffer bounded.

waitress reads requests in one I/O loop and hands only complete requests to a fixed pool of
threads, so a slow or silent client holds a connection slot, never a thread; ``/healthz`` and
the page keep answering. Bounds (``Limits``): threads, open connections, header and body size,
an idle timeout (``channel_timeout``) and a deadline for a whole request to arrive, which stops
a client that trickles one byte at a time (waitress alone only times out silence). The gate
(Host, HTTP Basic) runs in the I/O loop as soon as the headers are in: a refused request's body
is never read, and the connection closes after the refusal.

Safe by default: it binds 127.0.0.1; bound anywhere else it refuses to start without HTTP Basic
credentials (``IHUB_WEB_USER`` / ``IHUB_WEB_PASSWORD``), which then guard every path but
``/healthz``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer

from ihub.web.app import MAX_BODY, make_app
from ihub.web.gate import Gate, HostPolicy, is_loopback, public_hosts
from pipeline.errors import ConfigError
from pipeline.settings import settings_from_env

__all__ = ["Limits", "ServerHandle", "auth_from_env", "check_exposure", "is_loopback", "serve"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What one ``ihub web`` process gives to clients, at most."""

    threads: int = 8
    connections: int = 100
    timeout: float = 30.0  # idle seconds, and seconds for one request to arrive in full
    max_header: int = 32 << 10
    max_body: int = MAX_BODY
    cleanup_interval: float = 2.0  # how often timeouts are enforced


def auth_from_env(env: dict[str, str]) -> tuple[str, str] | None:
    settings = settings_from_env(env)
    user, password = settings.web_user, settings.web_password
    if bool(user) != bool(password):
        raise ConfigError("environment: IHUB_WEB_USER and IHUB_WEB_PASSWORD go together")
    return (user, password) if user else None


def public_hosts_from_env(env: dict[str, str]) -> frozenset[str]:
    return public_hosts(settings_from_env(env).web_public_host)


def limits_from_env(env: dict[str, str]) -> Limits:
    """``IHUB_WEB_THREADS`` and ``IHUB_WEB_TIMEOUT`` (seconds), validated by the settings."""
    settings = settings_from_env(env)
    return Limits(threads=settings.web_threads, timeout=settings.web_timeout)


def csrf_key_from_secret(secret: str) -> bytes:
    return hashlib.sha256(b"ihub-web-csrf:" + secret.encode()).digest()


def check_exposure(host: str, auth: tuple[str, str] | None) -> None:
    if auth is None and not is_loopback(host):
        raise ConfigError(
            f"ihub web: binding {host!r} (not loopback) needs HTTP Basic credentials: set "
            "IHUB_WEB_USER and IHUB_WEB_PASSWORD (and put TLS in front)"
        )


def _gated_parser(gate: Gate) -> type[HTTPRequestParser]:
    class GatedParser(HTTPRequestParser):
        """Refused at the headers: the body is dropped unread and the connection closes."""

        def parse_header(self, header_plus: bytes) -> None:
            super().parse_header(header_plus)
            has_body = self.content_length > 0 or self.chunked
            headers = self.headers
            if has_body and gate.refusal(
                self.path or "/", headers.get("HOST"), headers.get("AUTHORIZATION")
            ):
                self.body_rcv, self.content_length, self.chunked = None, 0, False
                self.expect_continue = False
                headers["CONTENT_LENGTH"] = "0"
                headers["CONNECTION"] = "close"  # the unread body must not parse as a request

    return GatedParser


class _Channel(HTTPChannel):
    """Notes when the request being read began, for the server's arrival deadline."""

    request_started = 0.0

    def received(self, data: bytes) -> bool:
        if self.request is None and data:
            self.request_started = time.time()
        return bool(super().received(data))


class _Server(TcpWSGIServer):
    channel_class = _Channel

    def maintenance(self, now: float) -> None:
        """waitress closes idle channels; also close those whose request takes too long."""
        super().maintenance(now)
        cutoff = now - self.adj.channel_timeout
        for channel in list(self.active_channels.values()):
            reading = channel.request is not None and not channel.requests
            if reading and channel.request_started < cutoff:
                channel.will_close = True


def _make_server(
    database_url: str,
    broker_url: str | None,
    host: str,
    port: int,
    options: dict[str, Any],
) -> _Server:
    limits: Limits = options.pop("limits", None) or Limits()
    public: frozenset[str] = options.pop("public_hosts", frozenset())
    check_exposure(host, options.get("auth"))
    options["hosts"] = HostPolicy(host, frozenset(public))
    app = make_app(database_url, broker_url, **options)
    adj = Adjustments(
        host=host,
        port=port,
        threads=limits.threads,
        connection_limit=limits.connections,
        channel_timeout=limits.timeout,
        cleanup_interval=limits.cleanup_interval,
        max_request_header_size=limits.max_header,
        max_request_body_size=limits.max_body,
        ident="ihub",
        expose_tracebacks=False,
    )
    gate = Gate(options["hosts"], options.get("auth"))
    channel = type("GatedChannel", (_Channel,), {"parser_class": _gated_parser(gate)})
    server_class = type("GatedServer", (_Server,), {"channel_class": channel})
    return server_class(app, map={}, adj=adj, sockinfo=adj.listen[0])


@dataclass
class ServerHandle:
    """A status server running in a daemon thread; ``stop()`` frees the port."""

    url: str
    port: int
    _server: _Server
    _thread: threading.Thread
    _stopping: threading.Event

    def stop(self) -> None:
        self._stopping.set()
        # wake the I/O loop now; it may already have seen the flag and closed the trigger
        with contextlib.suppress(OSError):
            self._server.pull_trigger()
        self._thread.join(timeout=10)


def _run(server: _Server, stopping: threading.Event | None = None) -> None:
    """The I/O loop until ``stopping``; then every socket closed and the threads ended."""
    try:
        while stopping is None or not stopping.is_set():
            wasyncore.loop(timeout=0.5, map=server._map, use_poll=True, count=1)
    finally:
        for dispatcher in list(server._map.values()):
            dispatcher.close()
        server.task_dispatcher.shutdown(timeout=5)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(
    database_url: str,
    broker_url: str | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8780,
    **options: Any,
) -> ServerHandle:
    """Serve in the background (tests, ``ihub demo``); port 0 picks a free port.

    Options: the fields of ``ihub.web.app.Config``, ``limits`` and ``public_hosts``.
    """
    server = _make_server(database_url, broker_url, host, port, options)
    stopping = threading.Event()
    thread = threading.Thread(target=_run, args=(server, stopping), name="ihub-web", daemon=True)
    thread.start()
    bound = int(server.effective_port)
    return ServerHandle(_url(host, bound), bound, server, thread, stopping)


def serve_forever(
    database_url: str,
    broker_url: str | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8780,
    **options: Any,
) -> None:
    """Blocking, for ``ihub web``: serves until the process is interrupted."""
    _run(_make_server(database_url, broker_url, host, port, options))
