"""Property: for every pagination style, any interleaving of source inserts, updates and deletes
(many sharing one timestamp) with syncs, page boundaries and record processing ends, after one
more delta, with the sink equal to the source: every id, at its latest version, staged once.

The engine functions run directly (RestSource, staging, ``pipeline.sync.process_record``) on
SQLite against one DemoSource on 127.0.0.1 with a frozen clock. Mutations are applied between
the pages of a sync, so page boundaries fall on a source that changes under the paginator.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from ihub.demo.source import DemoSource, DemoSourceOptions
from models.db import get_engine, session_scope
from models.migrate import upgrade
from models.schema import RecordStatus, StagedRecord
from pipeline import fetch as fetch_engine
from pipeline import sync
from pipeline.config import parse_config
from pipeline.delta import is_deletion
from pipeline.hub import Hub
from pipeline.settings import settings_from_env
from pipeline.sources.paginators import dig

NAME = "items"
EXAMPLES = int(os.environ.get("IHUB_PROPERTY_EXAMPLES", "25"))  # per style; raise for a deep run
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
GET_RECORDS = {"url": "/api/records", "records": "data"}
SERVICENOW_QUERY = (
    "sys_updated_on>{watermark}^NQsys_updated_on={watermark}^sys_id>{id}^ORDERBYsys_updated_on"
)
SEARCH_BODY = {
    "filterGroups": [
        {
            "filters": [
                {"propertyName": "hs_lastmodifieddate", "operator": "GTE", "value": "{watermark}"}
            ]
        }
    ],
    "sorts": [{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}],
}

# style name -> (source config with a {limit} placeholder, id path, version path)
STYLES: dict[str, tuple[dict[str, Any], str, str]] = {
    "cursor": ({**GET_RECORDS, "pagination": {"type": "cursor"}}, "id", "version"),
    "next_url": (
        {
            "url": "/api/feed",
            "records": "items",
            "updated": "modified",
            "updated_format": "epoch",
            "delta": {"param": "modified_since", "format": "epoch"},
            "pagination": {"type": "next_url"},
        },
        "id",
        "version",
    ),
    "link": (
        {
            "url": "/api/links",
            "delta": {"param": "since"},
            "pagination": {"type": "link", "limit_param": "per_page"},
        },
        "id",
        "version",
    ),
    "offset": (
        {**GET_RECORDS, "pagination": {"type": "offset", "total_path": "total"}},
        "id",
        "version",
    ),
    "page": (
        {**GET_RECORDS, "pagination": {"type": "page", "total_header": "X-Total-Count"}},
        "id",
        "version",
    ),
    "keyset_after_id": (
        {**GET_RECORDS, "pagination": {"type": "keyset", "id_param": "after_id"}},
        "id",
        "version",
    ),
    "keyset_tie_offset": (
        {**GET_RECORDS, "pagination": {"type": "keyset", "offset_param": "offset"}},
        "id",
        "version",
    ),
    "keyset_grow": (
        {**GET_RECORDS, "pagination": {"type": "keyset", "max_limit": 1000}},
        "id",
        "version",
    ),
    "servicenow_keyset": (
        {
            "url": "/api/table/incident",
            "records": "result",
            "id": "sys_id",
            "updated": "sys_updated_on",
            "updated_format": "datetime",
            "delta": {"param": "sysparm_query", "format": "datetime", "template": SERVICENOW_QUERY},
            "pagination": {"type": "keyset", "limit_param": "sysparm_limit"},
        },
        "sys_id",
        "version",
    ),
    "search_post": (
        {
            "url": "/api/search",
            "method": "POST",
            "body": SEARCH_BODY,
            "records": "results",
            "updated": "properties.hs_lastmodifieddate",
            "delta": {"format": "epoch_ms"},
            "pagination": {
                "type": "cursor",
                "cursor_path": "paging.next.after",
                "cursor_param": "after",
            },
        },
        "id",
        "properties.version",
    ),
}
POSITIONAL = {"cursor", "next_url", "link", "offset", "page", "search_post"}


@pytest.fixture(scope="module")
def demo() -> Iterator[DemoSource]:
    source = DemoSource(DemoSourceOptions(require_auth=False, page_size_max=1000)).start()
    yield source
    source.stop()


@pytest.fixture(scope="module")
def template_db() -> Iterator[Path]:
    """One migrated SQLite file, copied for every example (migrating each time is slow)."""
    folder = Path(tempfile.mkdtemp(prefix="ihub-prop-"))
    url = f"sqlite:///{folder / 'template.db'}"
    upgrade(url)
    get_engine(url).dispose()
    with contextlib.closing(sqlite3.connect(folder / "template.db")) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # all of it in the file itself
    yield folder / "template.db"
    shutil.rmtree(folder, ignore_errors=True)


def integration(demo: DemoSource, style: str, limit: int, lookback: int, action: str) -> dict:
    source, id_path, version_path = STYLES[style]
    source = json.loads(json.dumps(source))
    source["url"] = demo.url + source["url"]
    source["pagination"]["limit"] = limit
    source.setdefault("delta", {})["lookback"] = lookback
    source["deletes"] = {
        "endpoint": {"url": demo.url + "/api/deleted", "records": "data"},
        "action": action,
    }
    return {
        "source": {"auth": {"type": "none"}, **source},
        "transform": {"fields": {"id": id_path, "version": {"path": version_path, "type": "int"}}},
        "sink": {"table": "target"},
        "retry": {"max_retries": 0, "backoff": 0},
    }


class World:
    """One example: the demo source, a fresh database, and the operations on both."""

    def __init__(self, demo: DemoSource, db: Path, body: dict, ordered: bool, rng: random.Random):
        self.demo, self.rng = demo, rng
        self.just_read: list[str] = []  # the ids of the page a sync has just staged
        self.url = f"sqlite:///{db}"
        body["source"]["ordered"] = ordered
        config = parse_config({"integrations": {NAME: body}}, file="prop", env={})
        settings = settings_from_env({"IHUB_DATABASE_URL": self.url, "IHUB_HOME": str(db.parent)})
        self.hub = Hub(settings, config)

    def mutate(self, op: tuple[str, int]) -> None:
        kind, n = op
        live = sorted(self.demo.snapshot())
        if kind == "tick":
            self.demo.advance_clock(JUMPS[n % len(JUMPS)])
        elif kind == "insert" or not live:
            for _ in range(1 + n % 3):
                self.demo.insert({"priority": 1})
        elif kind == "update":
            self.demo.update(live[n % len(live)], state=f"s{n % 7}")
        elif kind == "bump":  # a row the pass has just read (or an old one): shifts the rest
            read = [i for i in self.just_read if i in live]
            if not read:
                oldest = sorted(self.demo.snapshot().values(), key=lambda r: r["updated_at"])
                read = [r["id"] for r in oldest[:3]]
            self.demo.update(read[n % len(read)], state="bumped")
        elif kind == "delete":
            self.demo.delete(live[n % len(live)])

    def sync(self, plan: list[list[tuple[str, int]]]) -> sync.FetchResult:
        real = self.hub.source(NAME)
        world = self

        class Interleaved:
            ordered = real.ordered

            def pages(self, since: Any, run: Any = None, resume: Any = None) -> Iterator[Any]:
                for number, page in enumerate(real.pages(since, run, resume)):
                    yield page
                    world.just_read = [r.id for r in page.records]
                    for op in plan[number] if number < len(plan) else []:
                        world.mutate(op)
                world.just_read = []

            def deletion_pages(self, since: Any, run: Any = None) -> Any:
                return real.deletion_pages(since, run)

        self.hub.source = lambda name: Interleaved()  # type: ignore[method-assign]
        try:
            result = sync.fetch_delta(self.hub, NAME, lambda ids: None, owner="prop")
        finally:
            del self.hub.source
        assert result.status == "ok", result
        return result

    def process(self, fraction: int) -> None:
        """Process a random share (in a random order) of the open rows: out of order on purpose."""
        with session_scope(self.url) as session:
            open_ids = list(
                session.scalars(
                    select(StagedRecord.id).where(StagedRecord.status == RecordStatus.PENDING)
                )
            )
        self.rng.shuffle(open_ids)
        for row_id in open_ids[: max(1, len(open_ids) * fraction // 4)] if fraction else open_ids:
            outcome = sync.process_record(self.hub, row_id)
            assert outcome.status in ("done", "skipped"), outcome

    def target(self, action: str) -> dict[str, int]:
        with get_engine(self.url).connect() as connection:
            if not connection.execute(
                text("SELECT name FROM sqlite_master WHERE name = 'target'")
            ).first():
                return {}
            columns = [c[1] for c in connection.execute(text("PRAGMA table_info(target)"))]
            rows = connection.execute(text("SELECT * FROM target")).mappings()
            live = [r for r in rows if "_ihub_deleted" not in columns or not r["_ihub_deleted"]]
            return {r["id"]: r["version"] for r in live}

    def staged_versions(self, style: str) -> list[tuple[str, Any]]:
        _config, _id_path, version_path = STYLES[style]
        with session_scope(self.url) as session:
            rows = session.execute(select(StagedRecord.record_id, StagedRecord.payload)).all()
        pairs = []
        for record_id, payload in rows:
            data = json.loads(payload)
            kind = "deleted" if is_deletion(data) else dig(data, version_path)
            pairs.append((record_id, kind))
        return pairs


# A tick jumps the clock by up to a minute, past any lookback: a record skipped at a page
# boundary is then not re-read by chance, and the test sees it. A bump updates one of the oldest
# rows, which a pass has read already: on positional paging that shifts every later row.
KINDS = ["insert", "update", "bump", "bump", "bump", "delete", "tick"]
JUMPS = [1, 1, 2, 7, 60]
MUTATION = st.tuples(st.sampled_from(KINDS), st.integers(0, 999))
# One round: the clock jumps, changes, then a sync with more changes at its page boundaries,
# then processing a share of the open rows (0: all of them).
ROUND = st.tuples(
    st.sampled_from(JUMPS),
    st.lists(MUTATION, max_size=5),
    st.lists(st.lists(MUTATION, max_size=5), max_size=5),
    st.integers(0, 4),
)


def check_style(demo: DemoSource, template_db: Path, style: str) -> Callable[..., None]:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        population=st.integers(2, 12),
        rounds=st.lists(ROUND, min_size=1, max_size=4),
        limit=st.integers(2, 4),
        lookback=st.sampled_from([0, 1, 3]),
        ordered=st.booleans() if style in POSITIONAL else st.just(True),
        action=st.sampled_from(["delete", "mark"]),
        seed=st.integers(0, 2**16),
    )
    def run(
        population: int,
        rounds: list[Any],
        limit: int,
        lookback: int,
        ordered: bool,
        action: str,
        seed: int,
    ) -> None:
        demo.clear()
        demo.freeze_clock(T0)
        for _ in range(population):  # all at T0: one large group sharing a timestamp
            demo.insert({"priority": 1})
        folder = Path(tempfile.mkdtemp(dir=template_db.parent))
        shutil.copy(template_db, folder / "ihub.db")
        body = integration(demo, style, limit, lookback, action)
        world = World(demo, folder / "ihub.db", body, ordered, random.Random(seed))
        try:
            for jump, changes, plan, share in rounds:
                demo.advance_clock(jump)
                for change in changes:
                    world.mutate(change)
                world.sync(plan)
                world.process(share)
            world.sync([])
            world.process(0)
            expected = {rid: int(r["version"]) for rid, r in demo.snapshot().items()}
            assert world.target(action) == expected
            staged = world.staged_versions(style)
            assert len(staged) == len(set(staged)), "a version was staged twice"
        finally:
            get_engine(world.url).dispose()

    return run


@pytest.mark.parametrize("style", sorted(STYLES))
def test_sink_equals_source_after_any_interleaving(
    demo: DemoSource, template_db: Path, style: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any interleaving of changes, syncs, page boundaries and processing converges."""
    # the engine and the source share one clock (skew is what the lookback is for)
    clock = lambda: demo.now().replace(tzinfo=None)  # noqa: E731  one clock for source and engine
    monkeypatch.setattr(sync, "utcnow", clock)
    monkeypatch.setattr(fetch_engine, "utcnow", clock)
    check_style(demo, template_db, style)()
