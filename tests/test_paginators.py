"""Paginators and request placement as pure state machines: hand-built replies, no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline.config import SourceConfig
from pipeline.delta import Watermark
from pipeline.errors import PermanentError
from pipeline.sources.paginators import (
    CursorPaginator,
    KeysetPaginator,
    NextUrlPaginator,
    OffsetPaginator,
    PagePaginator,
    Paginator,
    Reply,
    make_paginator,
    next_link,
)
from pipeline.sources.placement import build_request

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
URL = "https://api.example.com/items"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def source(**fields: Any) -> SourceConfig:
    return SourceConfig.model_validate({"url": URL, **fields})


def keys(*pairs: tuple[float, str]) -> list[Watermark | None]:
    return [Watermark(at(s), i) for s, i in pairs]


def reply(
    pairs: list[tuple[float, str]], body: Any = None, headers: dict[str, str] | None = None
) -> Reply:
    found = keys(*pairs)
    return Reply(body if body is not None else {}, headers or {}, [{}] * len(found), found, URL)


def paginator(pagination: dict[str, Any], since: datetime | None = None, **extra: Any) -> Any:
    return make_paginator(source(pagination=pagination, **extra), since)


# --- server-driven styles ------------------------------------------------------------------


def test_cursor_follows_the_body_token_and_stops_without_one() -> None:
    """The cursor from the body goes back as a parameter; no cursor ends the pass."""
    pages = paginator({"type": "cursor", "limit": 2})
    assert isinstance(pages, CursorPaginator) and pages.params() == {"limit": 2}
    pages.advance(reply([(0, "a"), (1, "b")], {"next_cursor": "c1"}))
    assert pages.params() == {"limit": 2, "cursor": "c1"} and not pages.done
    pages.advance(reply([(2, "c")], {"next_cursor": None}))
    assert pages.done


def test_cursor_twice_is_a_loop_and_an_error() -> None:
    """A cursor the source sends back twice raises instead of paging forever."""
    pages = paginator({"type": "cursor", "limit": 1})
    pages.advance(reply([(0, "a")], {"next_cursor": "same"}))
    with pytest.raises(PermanentError, match="came back twice"):
        pages.advance(reply([(1, "b")], {"next_cursor": "same"}))


@pytest.mark.parametrize(
    ("pagination", "body", "done"),
    [
        ({"type": "cursor", "limit": 2}, {"next_cursor": "x"}, False),
        ({"type": "cursor", "limit": 2, "stop_on_short_page": True}, {"next_cursor": "x"}, True),
        ({"type": "cursor", "limit": 1, "cursor_path": "meta.after"}, {"meta": {}}, True),
    ],
    ids=["short_page_ignored", "short_page_stops", "missing_nested_cursor"],
)
def test_cursor_stop_conditions(pagination: dict, body: dict, done: bool) -> None:
    """A short page stops only when asked to; a missing cursor (nested path) always does."""
    pages = paginator(pagination)
    pages.advance(reply([(0, "a")], body))
    assert pages.done is done


def test_next_url_from_the_body_is_followed_as_given() -> None:
    """The next URL (relative ones resolved) is requested as is, without our parameters."""
    pages = paginator({"type": "next_url", "next_url_path": "links.next", "limit": 2})
    assert pages.params() == {"limit": 2} and pages.next_url() is None
    pages.advance(reply([(0, "a"), (1, "b")], {"links": {"next": "/items?page=2"}}))
    assert pages.next_url() == "https://api.example.com/items?page=2" and pages.params() == {}
    pages.advance(reply([(2, "c"), (3, "d")], {"links": {"next": None}}))
    assert pages.done


def test_link_header_rel_next() -> None:
    """The Link header's rel="next" target is followed; without one the pass ends."""
    pages = paginator({"type": "link", "limit_param": "per_page", "limit": 2})
    assert isinstance(pages, NextUrlPaginator) and pages.params() == {"per_page": 2}
    header = '<https://x/items?page=1>; rel="prev", <https://x/items?page=3>; rel="next"'
    pages.advance(reply([(0, "a"), (1, "b")], headers={"Link": header}))
    assert pages.next_url() == "https://x/items?page=3"
    pages.advance(reply([(2, "c"), (3, "d")], headers={"Link": '<https://x/i?p=1>; rel="first"'}))
    assert pages.done


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('<https://a/b?c=1>; rel="next"', "https://a/b?c=1"),
        ('<https://a/1>; rel="prev next"', "https://a/1"),
        ("<https://a/1>; rel=next, <https://a/0>; rel=prev", "https://a/1"),
        ('<https://a/0>; rel="last"', None),
        ("", None),
        (None, None),
    ],
)
def test_next_link_parsing(header: str | None, expected: str | None) -> None:
    """RFC 8288 Link headers: quoted or bare rel, several relation types, several links."""
    assert next_link(header) == expected


# --- offset and page numbers ---------------------------------------------------------------


def test_offset_overlaps_and_trusts_an_unchanged_source() -> None:
    """Each request re-reads ``overlap`` rows; a next page starting on one of them is trusted."""
    pages = paginator({"type": "offset", "limit": 4, "overlap": 2})
    assert isinstance(pages, OffsetPaginator)
    pages.advance(reply([(0, "a"), (1, "b"), (2, "c"), (3, "d")]))
    assert pages.params() == {"limit": 4, "offset": 2}
    pages.advance(reply([(2, "c"), (3, "d"), (4, "e"), (5, "f")]))
    assert pages.params()["offset"] == 4 and pages.trusted and pages.checkpoint


def test_offset_detects_a_shift_larger_than_the_overlap() -> None:
    """A next page that does not start in the overlap may have skipped rows: not trusted."""
    pages = paginator({"type": "offset", "limit": 3, "overlap": 1})
    pages.advance(reply([(0, "a"), (1, "b"), (2, "c")]))
    pages.advance(reply([(4, "e"), (5, "f"), (6, "g")]))  # expected "c" first; "d" is gone
    assert not pages.trusted and not pages.checkpoint


def test_offset_an_overlap_row_that_changed_is_not_an_anchor() -> None:
    """The overlap row must come back unchanged (same updated) to count as the anchor."""
    pages = paginator({"type": "offset", "limit": 2, "overlap": 1})
    pages.advance(reply([(0, "a"), (1, "b")]))
    pages.advance(reply([(9, "b"), (2, "c")]))
    assert not pages.trusted


@pytest.mark.parametrize(
    ("pagination", "body", "headers", "count", "done"),
    [
        ({"limit": 3}, {}, {}, 2, True),
        ({"limit": 2, "total_path": "meta.total"}, {"meta": {"total": 2}}, {}, 2, True),
        ({"limit": 2, "total_header": "X-Total-Count"}, {}, {"X-Total-Count": "9"}, 2, False),
        ({"limit": 2}, {}, {}, 0, True),
        ({"limit": 3, "stop_on_short_page": False}, {}, {}, 2, False),
    ],
    ids=["short_page", "total_in_body", "total_header_more", "empty_page", "short_ignored"],
)
def test_offset_stop_conditions(
    pagination: dict, body: dict, headers: dict, count: int, done: bool
) -> None:
    """Offset paging stops on an empty or short page, or once the total count is read."""
    pages = paginator({"type": "offset", **pagination})
    pages.advance(reply([(i, str(i)) for i in range(count)], body, headers))
    assert pages.done is done


def test_page_numbers_count_up_and_stop_at_the_total() -> None:
    """Page numbers start at first_page; the total (header) ends the pass."""
    pages = paginator({"type": "page", "limit": 2, "first_page": 0, "total_header": "Total"})
    assert isinstance(pages, PagePaginator) and pages.params() == {"limit": 2, "page": 0}
    pages.advance(reply([(0, "a"), (1, "b")], headers={"Total": "4"}))
    assert pages.params()["page"] == 1 and not pages.done
    pages.advance(reply([(2, "c"), (3, "d")], headers={"Total": "4"}))
    assert pages.done and pages.trusted and not pages.checkpoint


@pytest.mark.parametrize(
    ("second", "total"),
    [([(2, "c"), (9, "a")], "4"), ([(2, "c"), (3, "d")], "5")],
    ids=["a_row_came_back_newer", "total_changed"],
)
def test_page_numbers_distrust_a_pass_that_saw_a_change(
    second: list[tuple[float, str]], total: str
) -> None:
    """A row seen again with a newer version, or a different total, means rows moved."""
    pages = paginator({"type": "page", "limit": 2, "total_header": "Total"})
    pages.advance(reply([(0, "a"), (1, "b")], headers={"Total": "4"}))
    pages.advance(reply(second, headers={"Total": total}))
    assert not pages.trusted


# --- keyset --------------------------------------------------------------------------------


def test_keyset_by_id_moves_the_bound_to_the_last_key() -> None:
    """With id_param the next request starts strictly after the last (updated, id) read."""
    pages = paginator({"type": "keyset", "limit": 2, "id_param": "after_id"}, at(-5))
    assert isinstance(pages, KeysetPaginator) and pages.bound() == (at(-5), "")
    assert pages.params() == {"limit": 2}
    pages.advance(reply([(0, "a"), (0, "b")]))
    assert pages.bound() == (at(0), "b") and pages.params() == {"limit": 2, "after_id": "b"}
    pages.advance(reply([(0, "c")]))
    assert pages.done


def test_keyset_by_id_that_makes_no_progress_fails() -> None:
    """An API that ignores the id parameter returns the same page: an error, not a loop."""
    pages = paginator({"type": "keyset", "limit": 2, "id_param": "after_id"})
    pages.advance(reply([(0, "a"), (0, "b")]))
    with pytest.raises(PermanentError, match="no progress"):
        pages.advance(reply([(0, "a"), (0, "b")]))


def test_keyset_by_id_from_a_template_placeholder() -> None:
    """{id} in the template makes keyset paging strict, and the id goes into the template."""
    template = "ts>{watermark}^NQts={watermark}^id>{id}"
    config = source(
        pagination={"type": "keyset", "limit": 1, "limit_param": None},
        delta={"param": "q", "template": template},
    )
    pages = make_paginator(config, None)
    first = build_request(config, pages.bound(), pages.params())
    assert first.params == {"q": "ts>1970-01-01T00:00:00Z^NQts=1970-01-01T00:00:00Z^id>"}
    pages.advance(reply([(0, "r1")]))
    second = build_request(config, pages.bound(), pages.params())
    assert second.params == {"q": "ts>2024-05-01T12:00:00Z^NQts=2024-05-01T12:00:00Z^id>r1"}


def test_keyset_closed_bound_skips_a_tie_with_offset_and_checks_the_overlap() -> None:
    """offset_param skips the rows of one timestamp already read, re-reading one as a check."""
    pages = paginator({"type": "keyset", "limit": 3, "offset_param": "offset"})
    pages.advance(reply([(0, "a"), (1, "b"), (1, "c")]))
    assert pages.bound() == (at(1), "") and pages.params() == {"limit": 3, "offset": 1}
    pages.advance(reply([(1, "c"), (1, "d"), (1, "e")]))  # all one timestamp: no progress
    assert pages.params()["offset"] == 3 and pages.trusted
    pages.advance(reply([(1, "e"), (2, "f"), (3, "g")]))
    assert pages.bound() == (at(3), "") and pages.params()["offset"] == 0 and pages.trusted
    pages.advance(reply([(3, "x")]))  # should have started with "g": a row moved away
    assert not pages.trusted and pages.done


def test_keyset_closed_bound_grows_the_page_past_a_tie() -> None:
    """A page full of one timestamp asks for a larger page, then goes back to the limit."""
    pages = paginator({"type": "keyset", "limit": 2, "max_limit": 4})
    pages.advance(reply([(0, "a"), (1, "b")]))
    pages.advance(reply([(1, "b"), (1, "c")]))
    assert pages.params() == {"limit": 4} and pages.bound() == (at(1), "")
    pages.advance(reply([(1, "b"), (1, "c"), (1, "d"), (2, "f")]))
    assert pages.bound() == (at(2), "") and pages.params() == {"limit": 2}


def test_keyset_closed_bound_fails_rather_than_loop() -> None:
    """Past max_limit (default: limit) a full page of one timestamp is an error, not a loop."""
    pages = paginator({"type": "keyset", "limit": 2})
    pages.advance(reply([(0, "a"), (1, "b")]))
    with pytest.raises(PermanentError, match="share the timestamp"):
        pages.advance(reply([(1, "b"), (1, "c")]))


def test_keyset_ties_are_counted_at_the_resolution_of_the_delta_format() -> None:
    """With epoch seconds, 12:00:00.2 and 12:00:00.9 are one timestamp for the bound."""
    pages = paginator(
        {"type": "keyset", "limit": 2, "offset_param": "offset"},
        delta={"format": "epoch"},
    )
    pages.advance(reply([(0.2, "a"), (0.9, "b")]))
    assert pages.params()["offset"] == 1
    request = build_request(source(delta={"format": "epoch"}), pages.bound(), {})
    assert request.params == {"updated_since": str(int(at(0).timestamp()))}


def test_keyset_short_page_after_a_tie_is_the_end() -> None:
    """The rest of a timestamp that fits in a short page means nothing follows it."""
    pages = paginator({"type": "keyset", "limit": 2})
    pages.advance(reply([(0, "a"), (1, "b")]))
    pages.advance(reply([(1, "b")]))
    assert pages.done


def test_make_paginator_none_is_one_request() -> None:
    """type: none sends one request and stops."""
    pages = paginator({"type": "none"})
    assert type(pages) is Paginator and pages.params() == {}
    pages.advance(reply([(0, "a")]))
    assert pages.done


# --- placement -----------------------------------------------------------------------------


BERLIN = {"format": "datetime", "timezone": "Europe/Berlin"}
BRACES = {"param": "q", "template": 'upd >= "{watermark}" {x}'}


@pytest.mark.parametrize(
    ("delta", "bound", "expected"),
    [
        ({}, None, {}),
        ({}, at(0), {"updated_since": "2024-05-01T12:00:00Z"}),
        ({"start": "2024-01-01T00:00:00"}, None, {"updated_since": "2024-01-01T00:00:00Z"}),
        (BERLIN, at(0), {"updated_since": "2024-05-01 14:00:00"}),
        ({"format": "epoch_ms", "param": "since"}, at(0.25), {"since": "1714564800250"}),
        (BRACES, at(0), {"q": 'upd >= "2024-05-01T12:00:00Z" {x}'}),
        ({"param": "q", "template": "upd>={watermark}"}, None, {"q": "upd>=1970-01-01T00:00:00Z"}),
        ({"param": "filter.updated.gte"}, at(0), {"filter.updated.gte": "2024-05-01T12:00:00Z"}),
    ],
    ids=["full_load_omits", "plain", "start", "zone", "epoch_ms", "template_braces",
         "template_full_load", "dotted_query_name"],
)  # fmt: skip
def test_delta_bound_in_the_query(delta: dict, bound: datetime | None, expected: dict) -> None:
    """The bound as a plain or templated query parameter, in the delta's format and zone."""
    config = source(delta=delta, params={"static": "1"}, pagination={"type": "none"})
    request = build_request(config, (bound, ""), {})
    assert request.method == "GET" and request.json is None
    assert request.params == {"static": "1", **expected}


def test_delta_bound_and_paging_in_a_post_body() -> None:
    """With POST, the bound fills the body's placeholders and paging goes into the body."""
    body = {"filter": {"gte": "{watermark}", "text": "since {watermark}"}, "sort": ["u"]}
    config = source(
        method="POST",
        body=body,
        delta={"format": "epoch_ms"},
        params={"api-version": "2"},
        pagination={"type": "cursor", "cursor_param": "page.after", "limit_param": "page.size"},
    )
    assert config.delta.param is None  # the body carries the bound
    request = build_request(config, (at(0), ""), {"page.size": 10, "page.after": "c"})
    assert request.method == "POST" and request.params == {"api-version": "2"}
    assert request.json == {
        "filter": {"gte": 1714564800000, "text": "since 1714564800000"},
        "sort": ["u"],
        "page": {"size": 10, "after": "c"},
    }
    assert body["filter"]["gte"] == "{watermark}", "the configured body is never modified"


def test_a_next_url_is_requested_as_given() -> None:
    """Following a next URL sends no parameters of ours (the URL carries them)."""
    config = source(params={"a": "1"})
    request = build_request(config, (at(0), ""), {"limit": 5}, "https://x/next?page=2")
    assert (request.url, request.params) == ("https://x/next?page=2", {})
