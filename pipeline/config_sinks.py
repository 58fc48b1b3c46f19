"""Sink configs: the SQL table sink, and the parts of a REST sink's config for targets that
assign their own ids (how a record is looked up by its source key, how a deletion reaches it)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.config_sources import http_url


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LookupConfig(_Strict):
    """How to find the target's record for a source key when the target assigns its own ids.

    ``params`` is the query of the search (``{key}`` stands for the source key), for example
    ServiceNow's ``sysparm_query: correlation_id={key}``; ``records`` is the dotted path of the
    list in its answer, ``id`` the path of the target id within one found record, and
    ``created_id`` its path in the answer to a create (default ``records.id``).
    """

    field: str = Field(description="the target field holding the source key, e.g. correlation_id")
    url: str | None = Field(None, description="search URL; default: the sink's url")
    params: dict[str, str] | None = Field(None, description="default: {field: '{key}'}")
    syntax: Literal["plain", "servicenow"] = "plain"
    records: str = ""
    id: str = "id"
    created_id: str | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else http_url(value)

    @property
    def query(self) -> dict[str, str]:
        return dict(self.params) if self.params is not None else {self.field: "{key}"}

    @property
    def created_id_path(self) -> str:
        if self.created_id is not None:
            return self.created_id
        return f"{self.records}.{self.id}" if self.records else self.id


class RestDeletesConfig(_Strict):
    """How a deletion reaches the target: DELETE the record, or PATCH it with ``body`` (a
    state change such as ``{state: "7"}``, the record kept)."""

    method: Literal["DELETE", "PATCH", "PUT"] = "DELETE"
    body: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _body_for_patch(self) -> RestDeletesConfig:
        if self.method != "DELETE" and not self.body:
            raise ValueError(f"method {self.method} needs a 'body' (the state change to send)")
        return self


class SqlSinkConfig(_Strict):
    type: Literal["sql"] = "sql"
    table: str
    key: str = "id"
    url: str | None = Field(None, description="target database; default: IHUB_DATABASE_URL")
    max_columns: int = Field(
        200, ge=1, le=1500, description="columns the source's fields may add; then _ihub_extra"
    )

    @field_validator("url")
    @classmethod
    def _supported_database(cls, value: str | None) -> str | None:
        return None if value is None else supported_database_url(value)

    @field_validator("table")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", value):
            raise ValueError(f"expected a SQL identifier (letters, digits, _), got {value!r}")
        if re.match(r"(?i)_?ihub_|alembic_version$", value):
            raise ValueError(f"{value!r} is a name of ihub's own tables (ihub_*, _ihub_*)")
        return value

    @field_validator("key")
    @classmethod
    def _key_column(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", value):
            raise ValueError(f"expected a column name (letters, digits, _), got {value!r}")
        if value.lower().startswith("_ihub_"):
            raise ValueError(f"{value!r}: names starting with _ihub_ are ihub's own columns")
        return value


SUPPORTED_DATABASES = ("postgresql", "sqlite")


def supported_database_url(value: str) -> str:
    """A PostgreSQL or SQLite URL: the upsert the sink writes exists in those two dialects only
    (``INSERT ... ON CONFLICT``); anything else would fail at the first write."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        backend = make_url(value).get_backend_name()
    except ArgumentError:
        raise ValueError("expected a database URL such as postgresql://user@host/db") from None
    if backend not in SUPPORTED_DATABASES:
        raise ValueError(
            f"{backend!r} databases are not supported: expected a postgresql:// or sqlite:// URL"
        )
    return value
