"""No page exhausts a worker, no record stalls a run (ARCHITECTURE invariant 8).

A response is read streamed and refused past ``limits.max_body_bytes`` (counted after
decompression, so a gzip bomb is refused too); a record nested deeper than ``limits.max_depth``
is rejected on its own, checked without recursion so no ``RecursionError`` can escape. A record
id that the staging table would refuse (over 255 characters, a NUL or another control
character, a lone surrogate: Postgres refuses the whole multi-row insert for one of them, SQLite
stores it) is a problem of that record alone, named by ``id_problem``.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests

from pipeline.config_sources import SourceLimits
from pipeline.errors import PermanentError

MAX_ID_LENGTH = 255  # the width of ihub_records.record_id (models.schema.StagedRecord)
CHUNK = 64 * 1024


@dataclass(frozen=True)
class Body:
    """A parsed response, and a digest of its bytes (for loop detection)."""

    data: Any
    digest: str


def read_json(response: requests.Response, limits: SourceLimits, *, what: str) -> Body:
    """The response's JSON, read in chunks and refused once it passes ``max_body_bytes``."""
    limit = limits.max_body_bytes
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        response.close()
        raise PermanentError(_too_large(what, f"declares {int(declared):,} bytes", limit))
    buffer, digest = bytearray(), hashlib.sha256()
    try:
        for chunk in _chunks(response):
            if len(buffer) + len(chunk) > limit:
                raise PermanentError(_too_large(what, "is larger", limit))
            buffer += chunk
            digest.update(chunk)
    finally:
        if response.raw is not None:
            response.close()
    return Body(_parse(bytes(buffer), what=what), digest.hexdigest())


def _chunks(response: requests.Response) -> Iterator[bytes]:
    if response.raw is None:  # built by hand, body already in memory
        yield response.content or b""
        return
    yield from response.iter_content(CHUNK)


def cap_error_body(response: requests.Response, limit: int = 4096) -> None:
    """Keep at most ``limit`` bytes of an error response: its message quotes only a snippet,
    and a hostile source's 500 page may be endless."""
    if response.status_code < 400 or response.raw is None:
        return
    try:
        head = response.raw.read(limit, decode_content=True) or b""
    finally:
        response.close()
    response._content = head  # what .text and .json() read from now on
    response._content_consumed = True  # type: ignore[attr-defined]


def _too_large(what: str, how: str, limit: int) -> str:
    return (
        f"{what}: the response {how} than the limit of {limit:,} bytes "
        "(source.limits.max_body_bytes); ask for smaller pages or raise the limit"
    )


def _parse(raw: bytes, *, what: str) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        raise PermanentError(
            f"{what}: the response nests too deep to be parsed (a record nested hundreds of "
            "levels deep); the page cannot be split into records"
        ) from None
    except ValueError:
        raise PermanentError(f"{what}: the response is not JSON") from None


def too_deep(node: Any, limit: int) -> bool:
    """Whether ``node`` nests more than ``limit`` levels of objects and lists (iteratively)."""
    if not isinstance(node, dict | list):
        return False
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(node, 1)]
    while stack:
        current, level = stack.pop()
        for child in current.values() if isinstance(current, dict) else current:
            if isinstance(child, dict | list):
                if level + 1 > limit:
                    return True
                stack.append((child, level + 1))
    return False


def id_problem(value: Any) -> str | None:
    """What makes ``value`` unusable as a record id (staging column, Postgres text), or None."""
    if isinstance(value, dict | list):
        return f"the id is a JSON {'object' if isinstance(value, dict) else 'array'}, not a value"
    text = str(value)
    if len(text) > MAX_ID_LENGTH:
        return f"the id is {len(text):,} characters long, more than {MAX_ID_LENGTH}"
    if text.isprintable():  # the common case, in C: no control character, no surrogate
        return None
    for position, char in enumerate(text):
        if unicodedata.category(char) in ("Cc", "Cs"):
            kind = "a lone surrogate" if unicodedata.category(char) == "Cs" else "a control char"
            return f"the id holds {kind} (U+{ord(char):04X}) at position {position}"
    return None


def unsafe_in_query(record_id: str, pattern: str) -> str | None:
    """Why ``record_id`` may not go into a ``{id}`` placeholder, or None when it may."""
    if re.fullmatch(pattern, record_id):
        return None
    bad = sorted({c for c in record_id if not re.fullmatch(pattern, c)})[:5]
    return (
        f"the id holds {''.join(bad)!r}, outside pagination.safe_id; placed into {{id}} of the "
        "query it would rewrite the next page's request"
    )


def fingerprint(items: list[Any], keys: list[Any], digest: str) -> str:
    """What identifies a page's content: its records' keys, or the body's bytes without any."""
    if any(key is not None for key in keys):
        return hashlib.sha256(repr(keys).encode()).hexdigest()
    return f"{len(items)}:{digest}"
