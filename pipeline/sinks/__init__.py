"""Sinks: where records go. Every write is an upsert guarded by the record's version."""

from typing import Any, Protocol

from pipeline.sinks.rest import RestSink
from pipeline.sinks.sql import SqlSink


class Sink(Protocol):
    def upsert(self, record: dict[str, Any], version: str) -> bool: ...


__all__ = ["RestSink", "Sink", "SqlSink"]
