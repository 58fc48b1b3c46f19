"""One record never stalls a run, no page exhausts a worker: a hostile source on 127.0.0.1
sends ids Postgres refuses, ids that rewrite the next query, records nested too deep, pages too
large or too many records, and the same page forever.

Each test is named after the attack; each failed before the fix (the page's insert failed and
the watermark stayed, the injected id reached the next request, a RecursionError escaped, the
whole body was read into memory, or the fetch never ended)."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import text

from models import integrations, queue
from models.db import get_engine, session_scope
from models.schema import RecordStatus, StagedRecord
from pipeline import sync
from pipeline.config import SourceConfig, parse_config
from pipeline.errors import PermanentError, TransientError
from pipeline.hub import Hub
from pipeline.settings import settings_from_env
from pipeline.sources.rest import RestSource
from tests.hostile_server import Answer, Local, Seen, json_answer, serve

NAME = "hostile"
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def record(number: int, record_id: Any = None, **extra: Any) -> dict[str, Any]:
    updated = (T0 + timedelta(seconds=number)).isoformat().replace("+00:00", "Z")
    return {
        "id": f"R{number:04d}" if record_id is None else record_id,
        "updated_at": updated,
        **extra,
    }


def fixed(body: Any) -> Any:
    raw = json.dumps(body).encode()
    return lambda seen, local: json_answer(raw)


def hub_for(url: str, home: Path, source_url: str) -> Hub:
    body = {
        "source": {"url": source_url, "records": "data", "pagination": {"type": "none"}},
        "sink": {"table": "target"},
        "retry": {"max_retries": 0, "backoff": 0},
    }
    config = parse_config({"integrations": {NAME: body}}, file="t", env={})
    return Hub(settings_from_env({"IHUB_DATABASE_URL": url, "IHUB_HOME": str(home)}), config)


def process_pending(hub: Hub) -> None:
    with session_scope(hub.database_url) as session:
        query = StagedRecord.__table__.select().where(StagedRecord.status == RecordStatus.PENDING)
        pending = [row.id for row in session.execute(query)]
    for row_id in pending:
        sync.process_record(hub, row_id)


@pytest.mark.services
def test_a_300_char_id_and_a_nul_id_among_100_good_records_are_dead_letters_on_postgres(
    pg_url: str, tmp_path: Path
) -> None:
    """Postgres refuses both in a multi-row insert: each is a dead letter naming its problem
    (once, however often it is re-read), the 100 good records land in the sink, and the
    watermark moves past the page."""
    rows = [record(n) for n in range(1, 101)]
    rows.insert(30, record(150, "x" * 300))
    rows.insert(70, record(151, "bad\x00id"))
    with serve("127.0.0.1", fixed({"data": rows})) as api:
        hub = hub_for(pg_url, tmp_path, f"{api.url}/items")
        result = sync.fetch_delta(hub, NAME, lambda ids: None, owner="test")
        again = sync.fetch_delta(hub, NAME, lambda ids: None, owner="test")  # re-reads both
    process_pending(hub)
    with get_engine(pg_url).connect() as connection:
        landed = connection.execute(text("SELECT count(*) FROM target")).scalar_one()
    assert again.status == "ok" and again.staged == 0
    letters = queue.list_dead(pg_url, integration=NAME)
    reasons = " | ".join(letter["message"] for letter in letters)
    assert landed == 100 and result.staged == 100, (landed, result)
    assert len(letters) == 2 and "300 characters long" in reasons, reasons
    assert "control char (U+0000) at position 3" in reasons, reasons
    assert all(len(letter["record_id"]) <= 255 for letter in letters)
    assert integrations.watermark(pg_url, NAME).id == "R0100"  # type: ignore[union-attr]


@pytest.mark.services
def test_a_nul_inside_a_value_never_fails_its_page_on_postgres(pg_url: str, tmp_path: Path) -> None:
    """A NUL or a lone surrogate inside a payload string is staged (escaped JSON text); a
    Postgres table refuses it at processing, that record alone, while the others land."""
    rows = [record(1, note="a\x00b"), record(2, note="\ud800"), record(3), record(4, n="ok")]
    with serve("127.0.0.1", fixed({"data": rows})) as api:
        hub = hub_for(pg_url, tmp_path, f"{api.url}/items")
        result = sync.fetch_delta(hub, NAME, lambda ids: None, owner="test")
    assert result.staged == 4 and queue.list_dead(pg_url, integration=NAME) == []
    process_pending(hub)
    with get_engine(pg_url).connect() as connection:
        landed = set(connection.execute(text("SELECT id FROM target")).scalars())
    dead = {letter["record_id"] for letter in queue.list_dead(pg_url, integration=NAME)}
    assert {"R0003", "R0004"} <= landed and dead <= {"R0001", "R0002"}
    assert landed | dead == {"R0001", "R0002", "R0003", "R0004"}
    assert queue.counts(pg_url, NAME)["pending"] == 0


@pytest.mark.services
def test_a_dead_letter_for_anything_a_source_sends_cannot_fail_its_insert(pg_url: str) -> None:
    """stage_dead escapes and cuts the id, escapes the reason and replaces an unserialisable
    payload, so a rejection can never take its page down with it."""
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    hostile_ids = ["\x00" * 300, "\ud800" + "é" * 400, "a" * 300, "a" * 300 + "b"]
    with session_scope(pg_url) as session:
        for number, record_id in enumerate(hostile_ids):
            payload = deep if number == 0 else {"v": "\x00"}
            queue.stage_dead(session, NAME, None, record_id, payload, f"bad\x00{record_id}")
    letters = queue.list_dead(pg_url, integration=NAME)
    stored = {letter["record_id"] for letter in letters}
    assert len(letters) == 4 and len(stored) == 4  # two long ids sharing a prefix stay apart
    assert all(len(record_id) <= 255 and "\x00" not in record_id for record_id in stored)


def answers(pages: list[list[dict[str, Any]]]) -> Any:
    """Each request gets the next page (the last one again once they run out)."""

    def respond(seen: Seen, local: Local) -> Answer:
        page = pages[min(len(local.seen), len(pages)) - 1]
        return json_answer(json.dumps({"result": page}).encode())

    return respond


def keyset(url: str, **pagination: Any) -> SourceConfig:
    return SourceConfig.model_validate(
        {
            "url": url,
            "params": {"sysparm_limit": "3"},
            "delta": {
                "param": "sysparm_query",
                "template": "sys_updated_on>={watermark}^sys_id>{id}^ORDERBYsys_updated_on",
            },
            "pagination": {"type": "keyset", "limit": 3, "limit_param": None, **pagination},
            "records": "result",
        }
    )


@pytest.mark.parametrize("bad", ["x^ORsys_id>0", "a&b=c", "a=b", "a b^NQactive=true"])
def test_an_id_with_query_metacharacters_never_reaches_the_next_query(bad: str) -> None:
    """Keyset paging puts the last id into sysparm_query: an id carrying the query language's
    operators is a dead letter instead, and the next page's query uses the last safe id."""
    pages = [[record(1), record(2), record(3, bad)], []]

    with serve("127.0.0.1", answers(pages)) as api:
        first, _ = list(RestSource("k", keyset(f"{api.url}/table")).pages(None))
    assert [r.id for r in first.records] == ["R0001", "R0002"]
    [reject] = first.rejects
    assert "outside pagination.safe_id" in reject.reason
    queries = [parse_qs(urlsplit(s.path).query)["sysparm_query"][0] for s in api.seen]
    assert queries[-1].split("^")[1] == "sys_id>R0002", queries
    assert bad not in " ".join(queries)


def test_a_full_page_of_rejected_ids_stops_the_run_instead_of_ending_it_quietly() -> None:
    """Keyset paging cannot move past a full page whose every id was refused: that is an
    error, not a pass that ends early and leaves the rest of the listing unread."""
    bad = [[record(2, "a^b"), record(3, "c^d"), record(5, "e^f")]]
    with (
        serve("127.0.0.1", answers(bad)) as api,
        pytest.raises(PermanentError, match="all 3 records of a full page were rejected"),
    ):
        list(RestSource("k", keyset(f"{api.url}/table")).pages(None))
    assert len(api.seen) == 1


def test_an_id_param_carries_any_id_encoded() -> None:
    """With id_param the id is a query value of its own (URL-encoded): nothing to refuse."""
    pages = [[record(1), record(2, "a&b=c")], []]
    with serve("127.0.0.1", answers(pages)) as api:
        config = SourceConfig.model_validate(
            {
                "url": f"{api.url}/t",
                "records": "result",
                "pagination": {"type": "keyset", "limit": 2, "id_param": "after_id"},
            }
        )
        first, _ = list(RestSource("k", config).pages(None))
    sent = parse_qs(urlsplit(api.seen[1].path).query)["after_id"]
    assert not first.rejects and sent == ["a&b=c"]


def nested(depth: int) -> Any:
    node: Any = "bottom"
    for _ in range(depth):
        node = {"n": node}
    return node


def test_a_record_nested_too_deep_is_rejected_on_its_own() -> None:
    """A record deeper than limits.max_depth is a dead letter; the others of its page go on."""
    rows = [record(1), record(2, deep=nested(200)), [[[[[[[[[[]]]]]]]]]], record(3)]
    with serve("127.0.0.1", fixed({"data": rows})) as api:
        source = RestSource("d", SourceConfig.model_validate(
            {"url": f"{api.url}/i", "records": "data", "pagination": {"type": "none"}}
        ))  # fmt: skip
        [page] = list(source.pages(None))
    assert [r.id for r in page.records] == ["R0001", "R0003"]
    deep, listed = page.rejects
    assert "deeper than 64 levels" in deep.reason and deep.record_id == "R0002"
    assert deep.payload == {"ihub_rejected": "nested too deep to keep", "id": "R0002"}
    assert "not an object" in listed.reason


def test_a_body_nested_beyond_any_parser_is_a_clear_error_not_a_recursion_error() -> None:
    """A response nested 100,000 levels deep cannot be split into records: the page fails
    with a PermanentError that says so (a RecursionError used to escape)."""
    body = b'{"data": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
    with serve("127.0.0.1", lambda seen, local: json_answer(body)) as api:
        config = SourceConfig.model_validate(
            {"url": f"{api.url}/i", "records": "data", "pagination": {"type": "none"}}
        )
        with pytest.raises(PermanentError, match="nests too deep"):
            list(RestSource("d", config).pages(None))


def test_a_page_with_more_records_than_the_limit_is_refused() -> None:
    """limits.max_records_per_page: a server that ignores our page size is an error."""
    with serve("127.0.0.1", fixed([record(n) for n in range(6)])) as api:
        config = SourceConfig.model_validate(
            {"url": f"{api.url}/i", "pagination": {"type": "none"},
             "limits": {"max_records_per_page": 5}}
        )  # fmt: skip
        with pytest.raises(PermanentError, match="6 records, more than"):
            list(RestSource("d", config).pages(None))


@pytest.mark.parametrize(
    "pagination",
    [{"type": "page", "limit": 2}, {"type": "offset", "limit": 2, "overlap": 0},
     {"type": "offset", "limit": 4}],
    ids=["page", "offset", "offset_overlap"],
)  # fmt: skip
def test_a_server_that_ignores_the_page_parameter_stops_the_run(pagination: dict) -> None:
    """The same page for every page number or offset: a clear error at the second request."""
    rows = [record(n) for n in range(pagination["limit"])]
    with serve("127.0.0.1", fixed(rows)) as api:
        config = SourceConfig.model_validate({"url": f"{api.url}/i", "pagination": pagination})
        with pytest.raises(PermanentError, match="returned the same page"):
            for number, _ in enumerate(RestSource("d", config).pages(None)):
                assert number < 50, "still paging: no loop detection"
    assert len(api.seen) == 2


HUGE = 200 * 1024 * 1024
CHILD = """
import json, resource, sys
from pipeline.config import SourceConfig
from pipeline.errors import PermanentError
from pipeline.sources.rest import RestSource
config = SourceConfig.model_validate(json.loads(sys.argv[1]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    list(RestSource("huge", config).pages(None))
    error = None
except PermanentError as exc:
    error = str(exc)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"error": error, "grown_kib": after - before, "peak_kib": after}))
"""


def endless_page(total: int) -> Iterator[bytes]:
    """A valid-looking page of ``total`` bytes, made a chunk at a time (never held whole)."""
    chunk = (json.dumps(record(1)) + ",").encode() * 4096
    yield b"["
    for _ in range(total // len(chunk)):
        yield chunk
    yield json.dumps(record(2)).encode() + b"]"


@pytest.mark.parametrize(
    "limits", [{}, {"max_body_bytes": 8 * 1024 * 1024}], ids=["default", "8MiB"]
)
def test_a_200_mb_page_is_refused_with_bounded_memory(limits: dict) -> None:
    """A 200 MB page (streamed by the server, no Content-Length) is refused past the body limit
    with an error naming it; the fetching process grows by about the limit, not the page."""

    def respond(seen: Seen, local: Local) -> Answer:
        return 200, {"Content-Type": "application/json"}, endless_page(HUGE)

    with serve("127.0.0.1", respond) as api:
        config = {"url": f"{api.url}/i", "pagination": {"type": "none"}, "limits": limits}
        done = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(config)],
            capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        outcome = json.loads(done.stdout)
        sent = api.sent_bytes
    limit = SourceConfig.model_validate(config).limits.max_body_bytes
    assert outcome["error"] and "max_body_bytes" in outcome["error"], outcome
    assert outcome["grown_kib"] * 1024 < limit + 48 * 1024 * 1024, (outcome, limit)
    assert sent < HUGE / 2, sent  # the server was cut off, not read to the end


def test_a_declared_oversize_body_is_refused_before_reading() -> None:
    """A Content-Length above the limit is refused without reading a byte of the body."""

    def respond(seen: Seen, local: Local) -> Answer:
        return 200, {"Content-Length": str(10**12), "Content-Type": "application/json"}, [b"[]"]

    with serve("127.0.0.1", respond) as api:
        config = SourceConfig.model_validate(
            {"url": f"{api.url}/i", "pagination": {"type": "none"}}
        )
        with pytest.raises(PermanentError, match="declares 1,000,000,000,000 bytes"):
            list(RestSource("d", config).pages(None))


def gzip_bomb(decoded: int) -> Iterator[bytes]:
    """``decoded`` bytes of JSON once inflated, about a thousandth of that on the wire."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    yield packer.compress(b'{"data": "')
    block = b"0" * (1024 * 1024)
    for _ in range(decoded // len(block)):
        yield packer.compress(block)
    yield packer.compress(b'"}') + packer.flush()


def test_a_gzip_bomb_is_refused_by_its_decoded_size() -> None:
    """The limit counts bytes after decompression: 1 GiB inflated from about 1 MB is refused
    with the fetching process not grown by more than the limit."""

    def respond(seen: Seen, local: Local) -> Answer:
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        return 200, headers, gzip_bomb(1024 * 1024 * 1024)

    limits = {"max_body_bytes": 8 * 1024 * 1024}
    with serve("127.0.0.1", respond) as api:
        config = {"url": f"{api.url}/i", "pagination": {"type": "none"}, "limits": limits}
        done = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(config)],
            capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = json.loads(done.stdout)
    assert outcome["error"] and "max_body_bytes" in outcome["error"], outcome
    assert outcome["grown_kib"] * 1024 < limits["max_body_bytes"] + 48 * 1024 * 1024, outcome


def test_an_endless_error_page_is_quoted_not_read() -> None:
    """A 500 whose body never ends: the error quotes its start, the rest is never read."""

    def respond(seen: Seen, local: Local) -> Answer:
        return 500, {"Content-Type": "text/html"}, endless_page(HUGE)

    with serve("127.0.0.1", respond) as api:
        config = SourceConfig.model_validate(
            {"url": f"{api.url}/i", "pagination": {"type": "none"}}
        )
        with pytest.raises(TransientError, match=r"HTTP 500 .*\[\{"):
            list(RestSource("d", config).pages(None))
        sent = api.sent_bytes
    assert sent < HUGE / 2, sent
