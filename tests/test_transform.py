"""The transform: YAML field mapping and casts, a Python callable, and a failure that kills only
its own record."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from models import queue
from models.db import get_engine, session_scope
from pipeline.config import TransformConfig, parse_config
from pipeline.delta import SourceRecord
from pipeline.errors import ConfigError, PermanentError
from pipeline.hub import Hub
from pipeline.settings import settings_from_env
from pipeline.sync import process_record
from pipeline.transform import Transform, apply

RECORD = {
    "sys_id": "a1",
    "short_description": "printer broken",
    "priority": "2",
    "active": "true",
    "sys_updated_on": "2024-05-01 12:00:00",
    "properties": {"amount": "12.50", "owner": {"email": "x@example.com"}},
    "tags": ["a", "b"],
}


def transform(**config: Any) -> Transform:
    return Transform(TransformConfig.model_validate(config), "tickets")


def test_mapping_renames_selects_lifts_and_adds_constants() -> None:
    """Mapped fields only: renamed, lifted out of nested objects, constants added."""
    result = transform(
        fields={
            "id": "sys_id",
            "title": "short_description",
            "owner": "properties.owner.email",
            "source": {"const": "servicenow"},
        }
    )(RECORD)
    assert result == {
        "id": "a1",
        "title": "printer broken",
        "owner": "x@example.com",
        "source": "servicenow",
    }


def test_unmapped_keep_passes_the_rest_through_minus_renamed_sources() -> None:
    """unmapped: keep keeps every other field; a renamed field is not kept twice."""
    result = transform(fields={"id": "sys_id", "title": "short_description"}, unmapped="keep")(
        RECORD
    )
    assert "sys_id" not in result and "short_description" not in result
    assert result["id"] == "a1" and result["tags"] == ["a", "b"] and result["priority"] == "2"


SERVICENOW_TIME = {"path": "sys_updated_on", "type": "datetime", "format": "datetime"}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"path": "priority", "type": "int"}, 2),
        ({"path": "properties.amount", "type": "float"}, 12.5),
        ({"path": "active", "type": "bool"}, True),
        ({"path": "tags", "type": "json"}, '["a", "b"]'),
        ({"path": "properties.owner", "type": "str"}, '{"email": "x@example.com"}'),
        (SERVICENOW_TIME, "2024-05-01T12:00:00Z"),
        ({"path": "missing"}, None),
        ({"path": "missing", "default": 0, "type": "int"}, 0),
        ({"const": None}, None),
    ],
    ids=["int", "float", "bool", "json", "str_of_object", "datetime", "missing", "default",
         "const_null"],
)  # fmt: skip
def test_casts(spec: dict[str, Any], expected: Any) -> None:
    """Each simple cast, a missing value (null, or the default), a null constant."""
    assert transform(fields={"value": spec})(RECORD) == {"value": expected}


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        ("7", "int", 7),
        ("7.0", "int", 7),
        (7.0, "int", 7),
        ("no", "bool", False),
        (0, "bool", False),
        ("1714564800250", "datetime", "2024-05-01T12:00:00.250000Z"),
    ],
)
def test_cast_inputs(value: Any, kind: str, expected: Any) -> None:
    """Numbers given as text, whole floats to int, words to bool, epoch ms to an instant."""
    fmt = "epoch_ms" if kind == "datetime" else "iso"
    mapping = {"v": {"path": "v", "type": kind, "format": fmt}}
    assert transform(fields=mapping)({"v": value}) == {"v": expected}


@pytest.mark.parametrize(
    ("value", "kind"),
    [("seven", "int"), ("7.5", "int"), (True, "int"), ("maybe", "bool"), ("soon", "datetime")],
)
def test_a_value_that_does_not_cast_is_a_permanent_error(value: Any, kind: str) -> None:
    """The error names the transform, the record and the field."""
    with pytest.raises(PermanentError, match=r"transform tickets: record r9: field 'v'"):
        transform(fields={"v": {"path": "v", "type": kind}})({"v": value}, "r9")


def shout(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "title": str(record.get("title", "")).upper()}


def explode(record: dict[str, Any]) -> dict[str, Any]:
    if record.get("id") == "bad":
        raise ValueError("cannot handle this one")
    return record


def not_a_dict(record: dict[str, Any]) -> list[Any]:
    return [record]


@pytest.mark.parametrize("path", ["tests.test_transform:shout", "tests.test_transform.shout"])
def test_callable_runs_after_the_mapping(path: str) -> None:
    """The callable (module:function or module.function) gets the mapped record."""
    result = transform(fields={"title": "short_description"}, callable=path)(RECORD)
    assert result == {"title": "PRINTER BROKEN"}


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("tests.test_transform:explode", "raised ValueError"),
        ("tests.test_transform:not_a_dict", "returned list"),
    ],
)
def test_callable_failures_are_permanent(path: str, message: str) -> None:
    """A callable that raises, or returns something else than a record, fails the record."""
    with pytest.raises(PermanentError, match=message):
        transform(callable=path)({"id": "bad"}, "bad")


def test_callable_that_does_not_import_is_permanent() -> None:
    """A callable that cannot be imported is named in the error."""
    with pytest.raises(PermanentError, match="cannot be loaded"):
        transform(callable="tests.no_such_module:f")


@pytest.mark.parametrize(
    ("transform_config", "problem"),
    [
        ({"fields": {"x": {"path": "a", "const": 1}}}, "exactly one of 'path' and 'const'"),
        ({"fields": {"x": {}}}, "exactly one of 'path' and 'const'"),
        ({"fields": {"x": {"path": "a", "type": "decimal"}}}, "type"),
        ({"callable": "not a path"}, "package.module:function"),
        ({"fields": {}, "unmaped": "keep"}, "unknown key"),
    ],
)
def test_transform_config_is_validated(transform_config: dict, problem: str) -> None:
    """Mistakes in the transform block are config errors that name the key."""
    raw = {
        "integrations": {
            "t": {
                "source": {"url": "https://x/items"},
                "transform": transform_config,
                "sink": {"table": "t"},
            }
        }
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, file="f.yaml", env={})
    assert any("integrations.t.transform" in p and problem in p for p in caught.value.problems), (
        caught.value.problems
    )


def test_a_failing_transform_dead_letters_only_its_record(sqlite_url: str, tmp_path: Path) -> None:
    """One record the callable rejects is dead with the reason; the others are written."""
    settings = settings_from_env({"IHUB_DATABASE_URL": sqlite_url, "IHUB_HOME": str(tmp_path)})
    config = parse_config(
        {
            "integrations": {
                "t": {
                    "source": {"url": "https://x/items"},
                    "transform": {
                        "fields": {"id": "id", "n": {"path": "n", "type": "int"}},
                        "callable": "tests.test_transform:explode",
                    },
                    "sink": {"table": "target"},
                }
            }
        },
        file="f",
        env={},
    )
    hub = Hub(settings, config)
    moment = datetime(2024, 5, 1, tzinfo=UTC)
    records = [SourceRecord(i, moment, {"id": i, "n": "1"}) for i in ("a", "bad", "c")]
    with session_scope(sqlite_url) as session:
        row_ids = queue.stage(session, "t", None, records, due_in=300)
    outcomes = [process_record(hub, row_id) for row_id in row_ids]
    assert [o.status for o in outcomes] == ["done", "dead", "done"]
    assert isinstance(outcomes[1].error, PermanentError)
    assert "cannot handle this one" in str(outcomes[1].error)
    with get_engine(sqlite_url).connect() as connection:
        rows = connection.exec_driver_sql("SELECT id, n FROM target ORDER BY id").all()
    assert [tuple(r) for r in rows] == [("a", 1), ("c", 1)]
    [letter] = queue.list_dead(sqlite_url)
    assert letter["record_id"] == "bad" and "transform t: record bad" in letter["message"]


def test_apply_without_a_transform_is_the_payload_itself() -> None:
    """No transform block: the staged payload goes to the sink as it is."""
    config = parse_config(
        {"integrations": {"t": {"source": {"url": "https://x/i"}, "sink": {"table": "t"}}}},
        file="f",
        env={},
    )
    payload = {"id": 1, "nested": {"a": [1]}}
    assert apply(config.get("t"), "1", payload) is payload
    assert json.dumps(payload)  # untouched
