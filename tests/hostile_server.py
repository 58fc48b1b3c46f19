"""A local HTTP server that records every request it receives (path and headers) and answers
with whatever the test's ``respond`` function returns: a status, headers and a body given as
an iterable of chunks (so a test can stream a huge page without holding it in memory)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Answer = tuple[int, dict[str, str], Iterable[bytes]]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Local:
    url: str
    host: str
    port: int
    seen: list[Seen] = field(default_factory=list)
    sent_bytes: int = 0


@contextmanager
def serve(host: str, respond: Callable[[Seen, Local], Answer]) -> Iterator[Local]:
    """Serve on ``host`` (127.0.0.1, 127.0.0.2, ...) at a free port until the block ends."""
    state: dict[str, Local] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection closes

        def _answer(self) -> None:
            local = state["local"]
            seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
            local.seen.append(seen)
            status, headers, body = respond(seen, local)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            try:
                for chunk in body:
                    self.wfile.write(chunk)
                    local.sent_bytes += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading: what the size limit is for

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    state["local"] = Local(f"http://{host}:{port}", host, port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["local"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def json_answer(body: bytes, status: int = 200, **headers: str) -> Answer:
    return status, {"Content-Type": "application/json", **headers}, [body]
