"""The status page's server under hostile clients: DNS rebinding, slow and unfinished requests.

Every wait here is bounded by a socket timeout or ``wait_until``; none measures speed.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ihub.web.gate import HostPolicy, public_hosts
from ihub.web.server import Limits, ServerHandle, limits_from_env, serve
from models import migrate
from models.db import session_scope
from models.schema import StagedRecord
from pipeline.errors import ConfigError
from tests import web_seed
from tests.chaostools import wait_until
from tests.web_seed import NOW

TIMEOUT = 10
EVIL = "evil.example:8080"
SHORT = Limits(threads=1, timeout=2.0, cleanup_interval=0.2)


@pytest.fixture
def seeded(tmp_path: Path) -> tuple[str, dict[str, int]]:
    url = f"sqlite:///{tmp_path}/web.db"
    migrate.upgrade(url)
    return url, web_seed.seed(url)


@pytest.fixture
def server(seeded: tuple[str, dict[str, int]]) -> Iterator[ServerHandle]:
    published: list[list[int]] = []
    handle = serve(seeded[0], None, port=0, clock=lambda: NOW, publish=published.append)
    yield handle
    handle.stop()


def status_of(url: str, row_id: int) -> str:
    with session_scope(url) as session:
        row = session.get(StagedRecord, row_id)
        assert row is not None
        return row.status


def raw(handle: ServerHandle, data: bytes) -> socket.socket:
    """A client socket that has sent ``data`` and nothing more."""
    sock = socket.create_connection(("127.0.0.1", handle.port), timeout=TIMEOUT)
    sock.sendall(data)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (bounded by the socket timeout)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_rebinding_host_is_refused_for_dead_letter_json_and_requeue(
    server: ServerHandle, seeded: tuple[str, dict[str, int]]
) -> None:
    """A page that rebinds evil.example to 127.0.0.1 reads no dead letter and requeues nothing."""
    url, ids = seeded
    row_id = ids["crm-dead-1145"]
    foreign = {"Host": EVIL}
    refused = requests.get(f"{server.url}/api/dead/{row_id}", headers=foreign, timeout=TIMEOUT)
    assert refused.status_code == 421 and "crm" not in refused.text
    assert requests.get(f"{server.url}/api/dead/{row_id}", timeout=TIMEOUT).status_code == 200
    session = requests.Session()
    page = session.get(server.url + "/dead", timeout=TIMEOUT).text
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found, "no CSRF field in the page"
    form = {"csrf": found.group(1), "scope": "selected", "row_id": str(row_id), "confirm": "yes"}
    post = session.post(server.url + "/dead/requeue", data=form, headers=foreign, timeout=TIMEOUT)
    assert post.status_code == 421 and status_of(url, row_id) == "dead"
    for path in ("/", "/dead", "/metrics", "/api/status"):
        assert requests.get(server.url + path, headers=foreign).status_code == 421, path


def test_loopback_names_and_public_hosts_are_accepted(seeded: tuple[str, dict[str, int]]) -> None:
    """Bound to loopback: its address, localhost, [::1] and IHUB_WEB_PUBLIC_HOST names answer."""
    names = public_hosts("ihub.example.com, Status.Example.org:443")
    handle = serve(seeded[0], None, port=0, clock=lambda: NOW, public_hosts=names)
    try:
        for host, code in [
            (f"127.0.0.1:{handle.port}", 200),
            (f"localhost:{handle.port}", 200),
            (f"[::1]:{handle.port}", 200),
            ("ihub.example.com", 200),
            ("status.example.org", 200),
            ("127.0.0.1.evil.example", 421),
            ("ihub.example.com.evil.example", 421),
            ("", 421),
        ]:
            response = requests.get(handle.url + "/api", headers={"Host": host}, timeout=TIMEOUT)
            assert response.status_code == code, host
    finally:
        handle.stop()


@pytest.mark.parametrize(
    ("bound", "header", "allowed"),
    [
        ("0.0.0.0", "192.0.2.7:8780", True),
        ("0.0.0.0", "[2001:db8::1]:8780", True),
        ("0.0.0.0", "localhost:8780", True),
        ("0.0.0.0", "ihub-web:8780", False),
        ("0.0.0.0", "evil.example", False),
        ("192.0.2.7", "192.0.2.7:8780", True),
        ("192.0.2.7", "127.0.0.1:8780", False),
        ("192.0.2.7", "192.0.2.8", False),
        ("127.0.0.1", "127.0.0.2:8780", True),
        ("127.0.0.1", "localhost.", True),
        ("127.0.0.1", "192.0.2.7", False),
        ("127.0.0.1", None, True),
    ],
)
def test_host_policy(bound: str, header: str | None, allowed: bool) -> None:
    """Wildcard binds accept IP literals (no rebinding) but no foreign name; others their own."""
    assert HostPolicy(bound).allows(header) is allowed


def test_unauthorised_body_is_never_read(seeded: tuple[str, dict[str, int]]) -> None:
    """Without credentials a POST is refused at its headers: no wait for the 60 kB it announced."""
    handle = serve(seeded[0], None, port=0, auth=("ops", "s3cret-pass"), limits=SHORT)
    try:
        head = (
            b"POST /dead/requeue HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 60000\r\n\r\n"
            b"scope=filter&confirm=yes&"
        )
        with raw(handle, head) as sock:
            sock.settimeout(SHORT.timeout / 2)  # well before the server's own timeout
            answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 401 ") and b"www-authenticate: basic" in answer.lower()
        foreign = head.replace(b"Host: 127.0.0.1", b"Host: evil.example")
        with raw(handle, foreign) as sock:
            sock.settimeout(SHORT.timeout / 2)
            assert read_all(sock).startswith(b"HTTP/1.1 421 ")
    finally:
        handle.stop()


def test_request_smuggled_in_a_refused_body_is_not_served(
    seeded: tuple[str, dict[str, int]],
) -> None:
    """The unread body of a refused request is not parsed as a second request."""
    handle = serve(seeded[0], None, port=0, auth=("ops", "s3cret-pass"), limits=SHORT)
    try:
        inner = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        head = b"POST /dead/requeue HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n"
        with raw(handle, head % len(inner) + inner) as sock:
            answer = read_all(sock)
        assert answer.count(b"HTTP/1.1 ") == 1 and answer.startswith(b"HTTP/1.1 401 ")
    finally:
        handle.stop()


def test_oversized_body_is_refused(server: ServerHandle) -> None:
    """A body past the limit (64 KiB) is answered 413 without being read."""
    head = b"POST /dead/requeue HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % (
        Limits().max_body + 1
    )
    with raw(server, head) as sock:
        assert read_all(sock).startswith(b"HTTP/1.1 413 ")


def test_slow_and_unfinished_clients_neither_block_others_nor_stay(
    seeded: tuple[str, dict[str, int]],
) -> None:
    """Half-sent headers, an unfinished body and a byte-a-moment trickle, on one worker thread:
    the page still answers, and each of them is cut off."""
    handle = serve(seeded[0], None, port=0, clock=lambda: NOW, limits=SHORT)
    stop_trickle = threading.Event()
    clients: list[socket.socket] = []
    try:
        silent = [
            raw(handle, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "),
            raw(handle, b"POST /dead/requeue HTTP/1.1\r\nHost: 127.0.0.1\r\n"),
            raw(
                handle,
                b"POST /dead/requeue HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 500\r\n\r\nab",
            ),
        ]
        clients += silent
        trickler = raw(handle, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: ")
        clients.append(trickler)
        cut: list[BaseException] = []

        def trickle() -> None:
            try:  # a byte well inside the idle timeout, for ever: only the deadline stops it
                while not stop_trickle.wait(SHORT.timeout / 10):
                    trickler.sendall(b"a")
            except OSError as exc:
                cut.append(exc)

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        for path in ("/healthz", "/", "/api/status"):
            assert requests.get(handle.url + path, timeout=TIMEOUT).status_code == 200, path
        for sock in silent:
            sock.settimeout(TIMEOUT * 2)
            assert sock.recv(1) == b"", "the server closes a client that stopped sending"
        wait_until(lambda: cut, timeout=TIMEOUT * 3, what="the trickling client is cut off")
        assert requests.get(handle.url + "/healthz", timeout=TIMEOUT).text == "ok"
    finally:
        stop_trickle.set()
        for sock in clients:
            sock.close()
        handle.stop()


def test_server_limits_from_the_environment() -> None:
    """IHUB_WEB_THREADS and IHUB_WEB_TIMEOUT are numbers; a bad one names the variable."""
    limits = limits_from_env({"IHUB_WEB_THREADS": "3", "IHUB_WEB_TIMEOUT": "12.5"})
    assert (limits.threads, limits.timeout) == (3, 12.5)
    assert limits_from_env({}) == Limits()
    for env in ({"IHUB_WEB_THREADS": "many"}, {"IHUB_WEB_TIMEOUT": "0"}):
        with pytest.raises(ConfigError, match=next(iter(env))):
            limits_from_env(env)


def test_stop_frees_the_port(seeded: tuple[str, dict[str, int]]) -> None:
    """stop() ends the server thread and closes the listening socket."""
    handle = serve(seeded[0], None, port=0, clock=lambda: NOW)
    assert requests.get(handle.url + "/healthz", timeout=TIMEOUT).text == "ok"
    handle.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(handle.url + "/healthz", timeout=TIMEOUT)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", handle.port))


def test_ihub_web_reads_its_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ihub web` answers to IHUB_WEB_PUBLIC_HOST names and refuses a bad IHUB_WEB_THREADS."""
    from click.testing import CliRunner

    from ihub import cli

    monkeypatch.setenv("IHUB_CONFIG", str(tmp_path / "none.yaml"))
    monkeypatch.setenv("IHUB_WEB_THREADS", "none")
    result = CliRunner().invoke(cli.main, ["web", "--port", "0"])
    assert result.exit_code == 2 and "IHUB_WEB_THREADS" in result.output
    url = f"sqlite:///{tmp_path}/cli.db"
    migrate.upgrade(url)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "IHUB_DATABASE_URL": url,
        "IHUB_HOME": str(tmp_path / "home"),
        "IHUB_CONFIG": str(tmp_path / "none.yaml"),
        "IHUB_WEB_PUBLIC_HOST": "status.example.org",
        "IHUB_WEB_THREADS": "2",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "ihub", "web", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(base + "/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return process.poll() is not None  # ended: the assertion below says so

    try:
        wait_until(up, timeout=60, what="ihub web answers /healthz")
        assert process.poll() is None, "ihub web exited"
        public = requests.get(base + "/api", headers={"Host": "status.example.org"}, timeout=5)
        assert public.status_code == 200
        assert requests.get(base + "/api", headers={"Host": EVIL}, timeout=5).status_code == 421
    finally:
        process.terminate()
        process.wait(10)
