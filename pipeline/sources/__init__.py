"""Sources: where records come from. Today: declarative REST APIs."""

from pipeline.sources.rest import RestSource

__all__ = ["RestSource"]
