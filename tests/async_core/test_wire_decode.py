"""Edge cases of the incremental decoders in async_core.wire (SSE per WHATWG, NDJSON)."""

from __future__ import annotations

import json

import pytest

from async_core.wire import NDJSONDecoder, SSEDecoder, SSEMessage, WireDecodeError


def feed_all(decoder: SSEDecoder, *chunks: bytes) -> list[SSEMessage]:
    out: list[SSEMessage] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


# --- SSE -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stream",
    [b"data: a\n\n", b"data: a\r\n\r\n", b"data: a\r\r", b"data: a\r\n\n", b"data: a\n\r\n"],
    ids=["lf", "crlf", "cr", "crlf-lf", "lf-crlf"],
)
def test_sse_any_line_ending_dispatches_one_event(stream: bytes) -> None:
    """CR, LF and CRLF all end a line, in any mix."""
    assert SSEDecoder().feed(stream) == [SSEMessage(data="a")]


def test_sse_cr_at_chunk_end_then_lf_is_one_line_ending() -> None:
    """A CR ending one chunk and an LF starting the next make a single CRLF, not a blank line."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\n\r") == [SSEMessage(data="a\nb")]
    assert decoder.feed(b"\n") == []


def test_sse_cr_at_chunk_end_then_cr_is_a_blank_line() -> None:
    """A CR ending one chunk followed by a CR is two line endings, which dispatches."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\r") == [SSEMessage(data="a")]


def test_sse_empty_chunk_keeps_pending_cr() -> None:
    """Feeding b"" between a CR and its LF does not lose the CRLF pairing."""
    assert feed_all(SSEDecoder(), b"data: a\r", b"", b"\n", b"\n") == [SSEMessage(data="a")]


def test_sse_utf8_split_across_chunks_is_reassembled() -> None:
    """A multi-byte character split between two chunks decodes intact."""
    raw = "data: é😀\n\n".encode()
    cut = raw.index(b"\xf0") + 2
    assert feed_all(SSEDecoder(), raw[:cut], raw[cut:]) == [SSEMessage(data="é😀")]


def test_sse_invalid_utf8_is_replaced() -> None:
    """Invalid UTF-8 becomes U+FFFD, as WHATWG's UTF-8 decode does."""
    assert SSEDecoder().feed(b"data: \xff\n\n") == [SSEMessage(data="\ufffd")]


def test_sse_bom_at_stream_start_is_stripped() -> None:
    """One UTF-8 BOM at the very start of the stream is dropped, even split across chunks."""
    assert feed_all(SSEDecoder(), b"\xef\xbb", b"\xbfdata: a\n\n") == [SSEMessage(data="a")]


def test_sse_bom_later_in_stream_is_kept() -> None:
    """A BOM that is not at the start of the stream is data (here it spoils a field name)."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\n") == [SSEMessage(data="a")]
    assert decoder.feed(b"\xef\xbb\xbfdata: b\n\n") == []


def test_sse_comments_are_ignored() -> None:
    """Lines starting with a colon are comments and never dispatch anything."""
    assert SSEDecoder().feed(b": ping\n\n:\n\ndata: a\n: mid-event\n\n") == [SSEMessage(data="a")]


def test_sse_empty_data_buffer_does_not_dispatch() -> None:
    """A block with no data line dispatches nothing, and its event type does not leak."""
    stream = b"event: x\n\nid: 7\n\nretry: 10\n\ndata: a\n\n"
    assert SSEDecoder().feed(stream) == [SSEMessage(data="a", id="7")]


def test_sse_empty_data_line_dispatches_empty_string() -> None:
    """A bare ``data`` line is a real, empty data value."""
    assert SSEDecoder().feed(b"data\n\n") == [SSEMessage(data="")]
    assert SSEDecoder().feed(b"data:\n\n") == [SSEMessage(data="")]


def test_sse_field_without_colon_has_empty_value() -> None:
    """``event`` alone sets an empty event type, which dispatches as ``message``."""
    assert SSEDecoder().feed(b"event\ndata: a\n\n") == [SSEMessage(data="a")]


def test_sse_only_one_leading_space_is_stripped() -> None:
    """One space after the colon is stripped; further spaces and no-space values are kept."""
    assert SSEDecoder().feed(b"data:  a\ndata:b\n\n") == [SSEMessage(data=" a\nb")]


def test_sse_event_and_multiple_data_lines() -> None:
    """Data lines are joined with LF and the event type is carried."""
    stream = b"event: delta\ndata: a\ndata: b\n\n"
    assert SSEDecoder().feed(stream) == [SSEMessage(event="delta", data="a\nb")]


def test_sse_unknown_fields_are_ignored() -> None:
    """Fields other than event, data, id and retry are ignored."""
    assert SSEDecoder().feed(b"foo: bar\ndata: a\n\n") == [SSEMessage(data="a")]


def test_sse_last_event_id_persists_across_events() -> None:
    """The id buffer persists until changed, and an empty ``id`` resets it."""
    decoder = SSEDecoder()
    events = decoder.feed(b"id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\n")
    assert [e.id for e in events] == ["1", "1", ""]
    assert decoder.last_event_id == ""


def test_sse_id_with_nul_is_ignored() -> None:
    """An id containing NUL is ignored, per WHATWG."""
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 1\n\nid: 2\x003\ndata: a\n\n") == [SSEMessage(data="a", id="1")]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"retry: 3000", 3000),
        (b"retry:0", 0),
        (b"retry: 3s", None),
        (b"retry: -1", None),
        (b"retry: ", None),
        (b"retry: \xd9\xa3", None),
    ],
    ids=["digits", "zero", "suffix", "negative", "empty", "non-ascii-digit"],
)
def test_sse_retry_accepts_only_ascii_digits(line: bytes, expected: int | None) -> None:
    """retry is set only by a value of ASCII digits; anything else is ignored."""
    decoder = SSEDecoder()
    (event,) = decoder.feed(line + b"\ndata: a\n\n")
    assert event.retry == expected
    assert decoder.retry == expected


def test_sse_unterminated_event_is_discarded() -> None:
    """An event without its blank line is never dispatched (WHATWG: discard at end of stream)."""
    assert SSEDecoder().feed(b"data: a\n") == []


def test_sse_unicode_line_separators_do_not_end_lines() -> None:
    """U+2028, U+2029, U+0085, VT and FF are data, not line endings."""
    text = "a\u2028b\u2029c\u0085d\x0be\x0cf"
    assert SSEDecoder().feed(f"data: {text}\n\n".encode()) == [SSEMessage(data=text)]


def test_sse_line_limit_raises() -> None:
    """A line longer than max_line_bytes raises WireDecodeError, complete or not."""
    with pytest.raises(WireDecodeError):
        SSEDecoder(max_line_bytes=8).feed(b"data: 0123456789\n\n")
    with pytest.raises(WireDecodeError):
        SSEDecoder(max_line_bytes=8).feed(b"data: 0123456789")


# --- NDJSON ----------------------------------------------------------------------------


def test_ndjson_split_inside_multibyte_utf8() -> None:
    """A chunk boundary inside a multi-byte character does not break the line."""
    raw = '{"t":"é😀"}\n'.encode()
    decoder = NDJSONDecoder()
    out = [obj for i in range(len(raw)) for obj in decoder.feed(raw[i : i + 1])]
    assert out == [{"t": "é😀"}]


def test_ndjson_skips_empty_and_blank_lines() -> None:
    """Empty and whitespace-only lines are skipped."""
    assert NDJSONDecoder().feed(b'\n{"a":1}\n\n  \n\r\n[2]\n') == [{"a": 1}, [2]]


def test_ndjson_tolerates_crlf() -> None:
    """A CR before the LF is tolerated."""
    assert NDJSONDecoder().feed(b'{"a":1}\r\n2\r\n') == [{"a": 1}, 2]


def test_ndjson_splits_only_on_lf() -> None:
    """Raw U+2028, U+2029, U+0085 and CR inside a line do not split it."""
    raw = '{"t":"a\u2028b\u2029c\u0085d"}\n'.encode()
    assert NDJSONDecoder().feed(raw) == [{"t": "a\u2028b\u2029c\u0085d"}]


def test_ndjson_flush_returns_unterminated_last_line() -> None:
    """flush() decodes a last line without newline, and returns nothing when empty."""
    decoder = NDJSONDecoder()
    assert decoder.feed(b'{"a":1}\n{"b"') == [{"a": 1}]
    assert decoder.feed(b":2}") == []
    assert decoder.flush() == [{"b": 2}]
    assert decoder.flush() == []


def test_ndjson_bom_at_stream_start_is_stripped() -> None:
    """A UTF-8 BOM at the start of the stream is dropped."""
    assert NDJSONDecoder().feed(b'\xef\xbb\xbf{"a":1}\n') == [{"a": 1}]


def test_ndjson_bad_line_raises_and_decoder_recovers() -> None:
    """A non-JSON line raises WireDecodeError with the objects before it; the rest survives."""
    decoder = NDJSONDecoder()
    with pytest.raises(WireDecodeError) as info:
        decoder.feed(b'1\nnot json\n{"a":2}\n')
    assert isinstance(info.value, ValueError)
    assert info.value.decoded == [1]
    assert info.value.line == b"not json"
    assert decoder.feed(b"") == [{"a": 2}]


def test_ndjson_invalid_utf8_raises() -> None:
    """A line that is not UTF-8 raises WireDecodeError, not UnicodeDecodeError."""
    with pytest.raises(WireDecodeError):
        NDJSONDecoder().feed(b'"\xff"\n')


def test_ndjson_line_limit_raises() -> None:
    """A line longer than max_line_bytes raises WireDecodeError, complete or not."""
    with pytest.raises(WireDecodeError):
        NDJSONDecoder(max_line_bytes=4).feed(b"123456\n")
    with pytest.raises(WireDecodeError):
        NDJSONDecoder(max_line_bytes=4).feed(b"123456")


def test_ndjson_long_line_fed_in_small_chunks_is_linear() -> None:
    """A 1 MB line fed in 1 KB chunks decodes (the decoder rescans only new bytes)."""
    raw = (json.dumps({"t": "x" * 1_000_000}) + "\n").encode()
    decoder = NDJSONDecoder()
    out = [obj for i in range(0, len(raw), 1024) for obj in decoder.feed(raw[i : i + 1024])]
    assert out == [{"t": "x" * 1_000_000}]
