"""Values that Postgres cannot refuse, for rows written from whatever a source sent.

SQLite stores a 300-character id in a ``String(255)`` column and a NUL in text; Postgres refuses
both, and with them the whole multi-row insert (PITFALLS 49). The source layer rejects such
records before staging; these make the rejection itself (``queue.stage_dead``) unfailable.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from models.schema import StagedRecord

RECORD_ID_WIDTH: int = getattr(StagedRecord.__table__.c.record_id.type, "length", None) or 255


def storable_text(text: str) -> str:
    """``text`` with what Postgres refuses in a text column (NUL, lone surrogates) escaped."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")


def storable_id(record_id: str) -> str:
    """An id that fits the column: control characters escaped; a long one cut, with a digest
    of the whole so two long ids that share a prefix stay apart."""
    escaped = "".join(
        c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
        for c in str(record_id)
    )
    escaped = storable_text(escaped)
    if len(escaped) <= RECORD_ID_WIDTH:
        return escaped
    digest = hashlib.sha256(str(record_id).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{escaped[: RECORD_ID_WIDTH - 20]}...#{digest}"


def storable_payload(payload: Any) -> str:
    try:
        return json.dumps(payload, default=str)  # ASCII: escapes NUL and surrogates
    except (RecursionError, ValueError, TypeError) as exc:
        return json.dumps({"ihub_unstorable_payload": type(exc).__name__})
