"""The cursor codec: ids round-trip, bad cursors are typed 400s; the package stays async-world."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from async_core.exceptions import BadRequest
from async_core.streamlog import (
    MAX_CURSOR_LENGTH,
    CursorError,
    CursorTooLong,
    EventId,
    ForeignCursor,
    MalformedCursor,
    decode_cursor,
    encode_id,
    new_epoch,
)
from tests.servers import REPO

stream_ids = st.text(min_size=1, max_size=80)
epochs = st.text(alphabet="0123456789abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=16)
numbers = st.integers(min_value=0, max_value=2**53 - 1)
event_ids = st.builds(EventId, epochs, numbers, numbers)


@given(stream_ids, event_ids)
def test_every_id_round_trips_and_fits(stream_id: str, eid: EventId) -> None:
    """Encoding then decoding gives the same id; the text is short and URL-safe."""
    text = encode_id(stream_id, eid)
    assert decode_cursor(stream_id, text) == eid
    assert len(text) <= MAX_CURSOR_LENGTH
    assert not set(text) & set(",&=?/ \r\n:")


@given(stream_ids, st.text(max_size=200))
def test_any_text_decodes_canonically_or_raises_a_400(stream_id: str, text: str) -> None:
    """Any text is the canonical encoding of an id, a start sentinel, or a CursorError (400)."""
    try:
        eid = decode_cursor(stream_id, text)
    except CursorError as exc:
        error: CursorError = exc
        assert isinstance(error, BadRequest) and error.status == 400  # noqa: PT017 - hypothesis
        return
    assert eid is None and text in ("", "-1") or eid is not None and \
        encode_id(stream_id, eid) == text


@given(event_ids, event_ids)
def test_order_within_an_epoch_is_the_numbers_order(a: EventId, b: EventId) -> None:
    """Positions compare as (major, minor), which is how Redis orders its stream ids."""
    assert (a.position < b.position) == ((a.major, a.minor) < (b.major, b.minor))


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40), event_ids)
def test_a_cursor_of_another_stream_is_foreign(s1: str, s2: str, eid: EventId) -> None:
    """A well-formed id of another stream raises ForeignCursor (unless the 24-bit tags collide)."""
    from async_core.streamlog._ids import stream_tag

    if stream_tag(s1) == stream_tag(s2):
        return
    with pytest.raises(ForeignCursor):
        decode_cursor(s2, encode_id(s1, eid))


def test_huge_and_malformed_cursors_are_typed() -> None:
    """A huge cursor is CursorTooLong before any parsing; junk and out-of-range are malformed."""
    with pytest.raises(CursorTooLong):
        decode_cursor("s", "a" * 10_000)
    for bad in ("1-2", "zzzzzz-ab-1-2", "abcdef-ab-01-2", "abcdef-AB-1-2", "abcdef--1-2",
                "abcdef-ab-1-2-3", "abcdef-ab-1-\u0662"):
        with pytest.raises(MalformedCursor):
            decode_cursor("s", bad)
    tag = encode_id("s", EventId("ab", 1, 2)).split("-")[0]
    with pytest.raises(MalformedCursor):
        decode_cursor("s", f"{tag}-ab-9999999999999999-1")  # above 2**53


def test_start_sentinels_and_fresh_epochs() -> None:
    """None, '' and '-1' mean the beginning; fresh epochs are valid and differ."""
    assert decode_cursor("s", None) is None and decode_cursor("s", "-1") is None
    assert len({new_epoch() for _ in range(100)}) == 100
    EventId(new_epoch(), 1, 1)


def test_memory_backend_imports_no_redis_and_nothing_sync() -> None:
    """Importing the package and the memory backend loads no redis, flask, janus or gevent."""
    code = ("import sys, json, async_core.streamlog as s; s.MemoryLog(); "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=60)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not loaded & {"redis", "flask", "werkzeug", "janus", "gunicorn", "gevent",
                         "legacy_bridge", "migration", "starlette"}
