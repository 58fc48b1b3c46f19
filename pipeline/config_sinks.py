"""The parts of a REST sink's config for targets that assign their own ids: how a record is
looked up by its source key, and how a deletion reaches the target."""

from __future__ import annotations

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
