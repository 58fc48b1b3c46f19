"""The HTTP/1.1 adapter of the demo source and target: one thread per connection, keep-alive,
every request handed to a ``Handle`` callable that returns a ``Response``."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from ihub.demo.options import Response, error

log = logging.getLogger("ihub.demo.source")

# (method, raw path with query, lower-case headers, body) -> response
Handle = Callable[[str, str, dict[str, str], bytes], Response]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    handle_request_of: Handle


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
            self._send(*error(400, "invalid_request", "bad Content-Length"))
            return
        body = self.rfile.read(length) if length > 0 else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            response = self.server.handle_request_of(method, self.path, headers, body)
        except Exception:  # a bug in the source must surface as a 500, not a dropped connection
            log.exception("demo source failed on %s %s", method, urlsplit(self.path).path)
            response = error(500, "server_error")
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


class BackgroundServer:
    """Serves ``handle`` on (host, port) in a daemon thread; port 0 picks a free one."""

    def __init__(self, handle: Handle, host: str, port: int) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.handle_request_of = handle
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="demosource", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
