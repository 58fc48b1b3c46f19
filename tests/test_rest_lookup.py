"""Upsert by look-up into a ServiceNow-style target: id map, no duplicate creates, 404s,
deletions with tombstones, the target's words, and the per-key lock."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from ihub.demo.servicenow import ServiceNowOptions, ServiceNowTarget
from models import idmap
from pipeline.config import RestSinkConfig
from pipeline.errors import PermanentError, TransientError
from pipeline.sinks.lookup import idempotency_key
from pipeline.sinks.rest import RestSink

V1, V2, V3 = "2026-01-01T00:00:01Z|1", "2026-01-01T00:00:02Z|2", "2026-01-01T00:00:03Z|3"


def servicenow_sink(url: str, database_url: str, **overrides: Any) -> RestSink:
    config: dict[str, Any] = {
        "type": "rest",
        "url": url,
        "key": "id",
        "version_field": None,
        "timeout": 5,
        "lookup": {
            "field": "correlation_id",
            "syntax": "servicenow",
            "params": {
                "sysparm_query": "correlation_id={key}",
                "sysparm_fields": "sys_id,correlation_id",
                "sysparm_limit": "2",
            },
            "records": "result",
            "id": "sys_id",
        },
        **overrides,
    }
    return RestSink("itsm", RestSinkConfig.model_validate(config), database_url=database_url)


@pytest.fixture
def target():
    demo = ServiceNowTarget(ServiceNowOptions(require_auth=False)).start()
    yield demo
    demo.stop()


@pytest.fixture
def sink(target: ServiceNowTarget, sqlite_url: str) -> RestSink:
    return servicenow_sink(target.table_url("incident"), sqlite_url)


def only(target: ServiceNowTarget, key: str) -> dict[str, Any]:
    found = target.by_field("incident")[key]
    assert len(found) == 1, found
    return found[0]


def test_create_stores_the_target_id_and_updates_go_straight_to_patch(
    sink, target, sqlite_url
) -> None:
    """The first write looks up then POSTs; the id map keeps sys_id, so the next is one PATCH."""
    assert sink.upsert({"id": "A1", "short_description": "one"}, V1) is True
    created = only(target, "A1")
    assert idmap.get(sqlite_url, "itsm", "A1").target_id == created["sys_id"]
    searches = target.counters["searches"]
    assert sink.upsert({"id": "A1", "short_description": "two"}, V2) is True
    assert target.counters["searches"] == searches and target.counters["updates"] == 1
    assert only(target, "A1")["short_description"] == "two"


def test_existing_target_record_is_found_by_correlation_id_and_patched(
    sink, target, sqlite_url
) -> None:
    """A record already on the target (no id map yet) is looked up and patched, not duplicated."""
    first = servicenow_sink(target.table_url("incident"), sqlite_url)
    first.upsert({"id": "B1", "short_description": "x"}, V1)
    idmap.forget(sqlite_url, "itsm", "B1")
    assert sink.upsert({"id": "B1", "short_description": "y"}, V2) is True
    assert only(target, "B1")["short_description"] == "y"
    assert target.counters["creates"] == 1


@pytest.mark.parametrize("how", ["504", "reset", "slow"])
def test_lost_create_answer_is_looked_up_on_retry_never_posted_twice(
    target, sqlite_url, how
) -> None:
    """A POST committed whose answer was lost (504, reset, or later than the client's timeout)
    is transient; its retry finds the record by look-up and patches it: one record."""
    sink = servicenow_sink(target.table_url("incident"), sqlite_url, timeout=1)
    target.set(slow_answer=2.0)
    target.lose_next(how)
    with pytest.raises(TransientError):
        sink.upsert({"id": "C1", "short_description": "v1"}, V1)
    assert target.counters["creates"] == 1
    assert sink.upsert({"id": "C1", "short_description": "v1"}, V1) is True
    assert target.counters["creates"] == 1 and only(target, "C1")["short_description"] == "v1"


def test_patch_404_forgets_the_mapping_and_creates_again(sink, target, sqlite_url) -> None:
    """A record deleted on the target: the PATCH's 404 forgets the id, the look-up finds none,
    and a new record is created and mapped."""
    sink.upsert({"id": "D1", "short_description": "a"}, V1)
    old = only(target, "D1")["sys_id"]
    target.remove("incident", old)
    assert sink.upsert({"id": "D1", "short_description": "b"}, V2) is True
    new = only(target, "D1")["sys_id"]
    assert new != old and idmap.get(sqlite_url, "itsm", "D1").target_id == new


def test_same_or_older_version_sends_nothing(sink, target) -> None:
    """ihub's version guard: a replay or an older version is a no-op without any request."""
    sink.upsert({"id": "E1", "short_description": "new"}, V2)
    requests_before = target.counters["api_requests"]
    assert sink.upsert({"id": "E1", "short_description": "new"}, V2) is False
    assert sink.upsert({"id": "E1", "short_description": "old"}, V1) is False
    assert target.counters["api_requests"] == requests_before
    assert only(target, "E1")["short_description"] == "new"


def test_two_workers_racing_on_one_new_key_create_one_record(target, db_url) -> None:
    """Two sinks (two workers) write two versions of a new key at once against a slow create:
    the per-key lock makes the second find the first's record; one record, newest version."""
    target.set(write_delay=0.5)
    sinks = [servicenow_sink(target.table_url("incident"), db_url) for _ in range(2)]
    errors: list[BaseException] = []

    def write(sink: RestSink, version: str, text: str) -> None:
        try:
            sink.upsert({"id": "F1", "short_description": text}, version)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=(sinks[0], V1, "v1")),
        threading.Thread(target=write, args=(sinks[1], V2, "v2")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == [] and target.counters["creates"] == 1
    assert only(target, "F1")["short_description"] == "v2"


def test_key_lock_is_exclusive_and_expires(db_url) -> None:
    """One holder at a time; a holder that died frees the key when its TTL runs out."""
    assert idmap.acquire(db_url, "itsm", "K", "a", ttl=60)
    assert not idmap.acquire(db_url, "itsm", "K", "b", ttl=60)
    idmap.release(db_url, "itsm", "K", "a")
    assert idmap.acquire(db_url, "itsm", "K", "b", ttl=-1)  # already expired
    assert idmap.acquire(db_url, "itsm", "K", "c", ttl=60)
    assert not idmap.renew(db_url, "itsm", "K", "b", ttl=60)


def test_busy_key_is_a_transient_error_after_a_bounded_wait(sink, sqlite_url) -> None:
    """A key another worker holds past lock_wait: retried later, nothing sent."""
    short = servicenow_sink(sink.config.url, sqlite_url, lock_wait=0.2)
    assert idmap.acquire(sqlite_url, "itsm", "G1", "someone", ttl=60)
    with pytest.raises(TransientError, match="another worker"):
        short.upsert({"id": "G1", "short_description": "x"}, V1)


def test_creates_carry_an_idempotency_key_of_record_and_version(sink, target) -> None:
    """The Idempotency-Key is derived from integration, key and version (stable on retry)."""
    target.lose_next("504")
    with pytest.raises(TransientError):
        sink.upsert({"id": "H1", "short_description": "x"}, V1)
    assert target.idempotency_keys == [idempotency_key("itsm", "H1", V1)]
    assert idempotency_key("itsm", "H1", V1) != idempotency_key("itsm", "H1", V2)


def test_mandatory_field_rejection_keeps_the_targets_words(sink, target) -> None:
    """A 400 from the target is permanent and its message reads as ServiceNow wrote it."""
    target.set(mandatory=("short_description",))
    with pytest.raises(PermanentError, match="Mandatory field missing: short_description"):
        sink.upsert({"id": "I1", "short_description": ""}, V1)
    target.set(mandatory=())
    assert sink.upsert({"id": "I1", "short_description": ""}, V1) is True


def test_query_metacharacters_in_a_key_are_refused(sink, target) -> None:
    """A key like ``x^ORsys_id>0`` would rewrite the sysparm_query: refused, nothing sent."""
    with pytest.raises(PermanentError, match="sysparm_query"):
        sink.upsert({"id": "x^ORsys_id>0", "short_description": "x"}, V1)
    assert target.counters["api_requests"] == 0


def test_delete_removes_the_record_and_buries_older_versions(sink, target) -> None:
    """DELETE by sys_id; a tombstone keeps an older version processed later from coming back;
    a newer one creates it again."""
    sink.upsert({"id": "J1", "short_description": "x"}, V1)
    assert sink.delete("J1", V2) is True
    assert "J1" not in target.by_field("incident")
    assert sink.upsert({"id": "J1", "short_description": "late"}, V1) is False
    assert "J1" not in target.by_field("incident")
    assert sink.upsert({"id": "J1", "short_description": "back"}, V3) is True
    assert only(target, "J1")["short_description"] == "back"


def test_delete_as_a_state_change_keeps_the_record(target, sqlite_url) -> None:
    """deletes: {method: PATCH, body: {state: "7"}} closes the record instead of deleting it."""
    sink = servicenow_sink(
        target.table_url("incident"),
        sqlite_url,
        deletes={"method": "PATCH", "body": {"state": "7"}},
    )
    sink.upsert({"id": "L1", "short_description": "x", "state": "1"}, V1)
    assert sink.delete("L1", V2) is True
    assert only(target, "L1")["state"] == "7"
    assert sink.delete("L1", V1) is False


def test_rest_sink_requests_wait_for_the_shared_rate_limiter(sink, target, sqlite_url) -> None:
    """Every request of the sink (look-up, create, update) takes a slot of the limiter."""

    class Counting:
        calls = 0

        def acquire(self) -> float:
            Counting.calls += 1
            return 0.0

    limited = RestSink("itsm", sink.config, database_url=sqlite_url, limiter=Counting())
    limited.upsert({"id": "M1", "short_description": "x"}, V1)
    limited.upsert({"id": "M1", "short_description": "y"}, V2)
    assert Counting.calls == 3 == target.counters["api_requests"]


@pytest.mark.parametrize("key", [".", ".."])
def test_dot_keys_are_refused_before_any_request(key: str) -> None:
    """``.`` and ``..`` survive quote() and would hit the collection or its parent: refused."""
    config = RestSinkConfig(type="rest", url="http://127.0.0.1:9/api/items/{id}")
    with pytest.raises(PermanentError, match="cannot name a record"):
        RestSink("x", config).upsert({"id": key}, V1)


def test_lookup_url_with_id_placeholder_is_a_config_error() -> None:
    """With lookup, url is the collection: an {id} there is refused with the reason."""
    with pytest.raises(ValueError, match="collection URL"):
        RestSinkConfig.model_validate(
            {"type": "rest", "url": "http://x/api/{id}", "lookup": {"field": "correlation_id"}}
        )


def test_dead_letter_detail_shows_the_id_map(sink, target, sqlite_url, monkeypatch) -> None:
    """`ihub dead show` and the page's detail name the target's id of a dead record."""
    import json
    from datetime import datetime

    from click.testing import CliRunner

    from ihub.cli import main
    from ihub.report import dead_letter
    from ihub.web.pages_dead import dead_detail
    from models import queue
    from models.db import session_scope
    from pipeline.delta import SourceRecord

    sink.upsert({"id": "N1", "short_description": "x"}, V1)
    sys_id = only(target, "N1")["sys_id"]
    with session_scope(sqlite_url) as session:
        [row_id] = queue.stage(
            session,
            "itsm",
            None,
            [SourceRecord("N1", datetime(2026, 1, 1), {"id": "N1"})],
            due_in=300,
        )
    assert queue.claim(sqlite_url, row_id, deadline=60) is not None
    queue.mark_dead(
        sqlite_url, row_id, error_class="PermanentError", message="400", traceback=None, worker="w"
    )
    monkeypatch.setenv("IHUB_DATABASE_URL", sqlite_url)
    result = CliRunner().invoke(main, ["dead", "show", str(row_id), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["id_map"] == {
        "target_id": sys_id,
        "version": V1,
        "state": "mapped",
    }
    assert f"target_id: {sys_id}" in dead_detail(dead_letter(sqlite_url, row_id), "csrf")


def test_throttled_request_is_transient_with_the_targets_retry_after(sink, target) -> None:
    """A 429 with Retry-After from the target is retried after the delay it named."""
    target.set(throttle_every=1)
    with pytest.raises(TransientError, match="Too Many Requests") as caught:
        sink.upsert({"id": "P1", "short_description": "x"}, V1)
    assert caught.value.retry_after == 1.0


def test_lookup_config_errors_name_file_and_key() -> None:
    """A misspelt lookup key and a state-change deletion without a body are both reported."""
    from pipeline.config import parse_config
    from pipeline.errors import ConfigError

    sink = {
        "type": "rest",
        "url": "http://x/api/now/table/incident",
        "lookup": {"field": "correlation_id", "feild": "x"},
        "deletes": {"method": "PATCH"},
    }
    raw = {"integrations": {"a": {"source": {"url": "http://x/r"}, "sink": sink}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, file="f.yaml", env={})
    assert "f.yaml: integrations.a.sink.lookup.feild: unknown key" in str(caught.value)
    assert "integrations.a.sink.deletes" in str(caught.value) and "needs a 'body'" in str(
        caught.value
    )


def test_idempotency_key_can_be_switched_off(target, sqlite_url) -> None:
    """idempotency_key: false sends no such header (for targets that reject unknown headers)."""
    sink = servicenow_sink(target.table_url("incident"), sqlite_url, idempotency_key=False)
    sink.upsert({"id": "Q1", "short_description": "x"}, V1)
    assert target.counters["creates"] == 1 and target.idempotency_keys == []
