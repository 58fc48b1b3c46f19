"""Sinks: where records go. Every write is an upsert guarded by the record's version."""

from pipeline.sinks.sql import SqlSink

__all__ = ["SqlSink"]
