"""Property tests of async_core.wire: any text survives every format, split anywhere.

Each round trip encodes the text as one or more deltas, cuts the bytes at points
chosen by hypothesis, feeds the pieces to an incremental decoder and compares.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from async_core.wire import (
    Delta,
    Done,
    Error,
    Event,
    Format,
    NDJSONDecoder,
    SSEDecoder,
    State,
    StreamMeta,
    encode_ndjson,
    encode_sse,
    make_encoder,
)

META = StreamMeta(
    stream_id="s", conversation_id="c", model="m", created=1_700_000_000.0, include_usage=True,
    clock=lambda: 1_700_000_000.5,
)  # fmt: skip

# Texts every round trip must carry, besides what st.text() generates.
TRICKY = [
    "",
    "a\r\nb",
    "a\nb\n",
    "a\rb",
    "\r",
    "\r\n\r\n",
    "line\u2028sep\u2029para\u0085nel",
    "\x0b\x0c\x1c\x1d\x1e",
    "emoji 😀👩‍👩‍👧 é ü 中文",
    "nul\x00byte",
    "\ufeffbom",
    "data: [DONE]",
    ": not a comment",
    "x" * 100_000,
]
CUTS = st.lists(st.integers(min_value=0, max_value=2**20), max_size=12)
FEW = settings(max_examples=60, deadline=None)


def with_tricky(test: Callable[..., None]) -> Callable[..., None]:
    """Add every TRICKY text as an explicit example, cut at a few fixed points."""
    for text in TRICKY:
        test = example(text=text, cuts=[1, 5, 9, 17, 200_001])(test)
    return test


def split(raw: bytes, cuts: Sequence[int]) -> Iterator[bytes]:
    """Cut raw at the given points (taken modulo its length), in sorted order."""
    points = sorted({cut % (len(raw) + 1) for cut in cuts} | {0, len(raw)})
    for start, end in zip(points, points[1:], strict=False):
        yield raw[start:end]


def as_deltas(text: str, cuts: Sequence[int]) -> list[Event]:
    """Split text into deltas at character cut points and end with Done."""
    points = sorted({cut % (len(text) + 1) for cut in cuts} | {0, len(text)})
    pieces = [text[a:b] for a, b in zip(points, points[1:], strict=False)] or [""]
    events: list[Event] = [Delta(i + 1, piece, i + 1) for i, piece in enumerate(pieces)]
    events.insert(1, State(len(events) + 1, {"note": text[:50]}))
    events.append(Done(len(events) + 1, "stop", len(pieces), 1.0, 2.0, "c"))
    return events


def encode(fmt: Format, events: Sequence[Event]) -> bytes:
    encoder = make_encoder(fmt, META)
    return b"".join(encoder.heartbeat() + encoder.encode(event) for event in events)


def sse_messages(raw: bytes, cuts: Sequence[int]) -> list[Any]:
    decoder = SSEDecoder()
    return [message for chunk in split(raw, cuts) for message in decoder.feed(chunk)]


def ndjson_objects(raw: bytes, cuts: Sequence[int]) -> list[Any]:
    decoder = NDJSONDecoder()
    objs = [obj for chunk in split(raw, cuts) for obj in decoder.feed(chunk)]
    return objs + decoder.flush()


def decode_text(fmt: Format, raw: bytes, cuts: Sequence[int]) -> str:
    """Decode a stream of the given format back into the concatenated delta text."""
    if fmt == "sse":
        messages = sse_messages(raw, cuts)
        assert messages[-1].event == "done"
        return "".join(json.loads(m.data)["text"] for m in messages if m.event == "delta")
    if fmt == "openai":
        messages = sse_messages(raw, cuts)
        assert messages[-1].data == "[DONE]"
        chunks = [json.loads(m.data) for m in messages[:-1]]
        return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    if fmt == "text":
        decoder = codecs.getincrementaldecoder("utf-8")()
        return "".join(decoder.decode(chunk) for chunk in split(raw, cuts)) + decoder.decode(
            b"", final=True
        )
    objs = ndjson_objects(raw, cuts)
    if fmt == "ndjson":
        assert objs[-1]["event"] == "done"
        return "".join(o["text"] for o in objs if o.get("event") == "delta")
    assert objs[-1]["done"] is True
    if fmt == "ollama-chat":
        return "".join(o["message"]["content"] for o in objs)
    return "".join(o["response"] for o in objs)


ALL_FORMATS: list[Format] = ["sse", "ndjson", "text", "openai", "ollama-chat", "ollama-generate"]


@pytest.mark.parametrize("fmt", ALL_FORMATS)
@with_tricky
@FEW
@given(text=st.text(), cuts=CUTS)
def test_any_text_survives_every_format_split_anywhere(
    fmt: Format, text: str, cuts: list[int]
) -> None:
    """Text cut into deltas, encoded with heartbeats, bytes cut anywhere, decodes to the input."""
    raw = encode(fmt, as_deltas(text, cuts))
    assert decode_text(fmt, raw, cuts[::-1]) == text


@pytest.mark.parametrize("fmt", ["sse", "ndjson", "openai", "ollama-chat", "ollama-generate"])
@settings(max_examples=30, deadline=None)
@given(text=st.text(alphabet=st.characters(exclude_categories=())), cuts=CUTS)
def test_json_formats_carry_lone_surrogates(fmt: Format, text: str, cuts: list[int]) -> None:
    """JSON formats carry any Python str, lone surrogates included, as JSON escapes."""
    raw = encode(fmt, as_deltas(text, cuts))
    raw.decode("utf-8")  # always valid UTF-8
    assert decode_text(fmt, raw, cuts) == text


@with_tricky
@FEW
@given(text=st.text(), cuts=CUTS)
def test_encode_sse_data_round_trips_with_newlines_normalised(text: str, cuts: list[int]) -> None:
    """encode_sse(data=text) decodes to text with every CRLF, CR and LF turned into LF."""
    messages = sse_messages(encode_sse(data=text), cuts)
    assert [m.data for m in messages] == [re.sub(r"\r\n|\r", "\n", text)]


@FEW
@given(
    event=st.text(), id_=st.text(), data=st.text(), cuts=CUTS,
)  # fmt: skip
def test_encode_sse_fields_round_trip(event: str, id_: str, data: str, cuts: list[int]) -> None:
    """event and id come back minus CR/LF (and NUL for id); an empty event type is message."""
    raw = encode_sse(comment="c", event=event, id=id_, data=data)
    (message,) = sse_messages(raw, cuts)
    assert message.event == (re.sub("[\r\n]", "", event) or "message")
    assert message.id == re.sub("[\r\n\0]", "", id_)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@FEW
@given(objs=st.lists(JSON, max_size=8), cuts=CUTS)
def test_ndjson_round_trip_split_anywhere(objs: list[Any], cuts: list[int]) -> None:
    """Any JSON values survive encode_ndjson, arbitrary chunking and NDJSONDecoder."""
    raw = b"".join(encode_ndjson(obj) for obj in objs)
    assert ndjson_objects(raw, cuts) == objs


@FEW
@given(objs=st.lists(JSON, min_size=1, max_size=8))
def test_ndjson_survives_str_splitlines(objs: list[Any]) -> None:
    """NDJSON is ASCII, and str.splitlines() (httpx iter_lines) yields one line per object."""
    text = b"".join(encode_ndjson(obj) for obj in objs).decode("ascii")
    for char in "\u2028\u2029\u0085":
        assert char not in text
    lines = text.splitlines()
    assert len(lines) == len(objs)
    assert [json.loads(line) for line in lines] == objs


@pytest.mark.parametrize("fmt", ["ndjson", "ollama-chat", "ollama-generate"])
@with_tricky
@FEW
@given(text=st.text(), cuts=CUTS)
def test_ndjson_formats_are_ascii_one_line_per_object(
    fmt: Format, text: str, cuts: list[int]
) -> None:
    """Every NDJSON format is pure ASCII and splitlines() matches the b"\\n" framing."""
    raw = encode(fmt, as_deltas(text, cuts))
    assert raw.isascii()
    assert raw.decode("ascii").splitlines() == raw.decode("ascii").split("\n")[:-1]


# --- the official clients' decoders ----------------------------------------------------


class OpenAIRule:
    """openai-python's dispatch rule: a blank line dispatches if event, data, retry or
    the (never reset) last event id is set (openai-python#2722)."""

    def __init__(self) -> None:
        self.event: str | None = None
        self.data: list[str] = []
        self.last_id: str | None = None
        self.retry: str | None = None

    def lines(self, raw: bytes) -> list[str | None]:
        """Return the data of every dispatched event (None never occurs for good frames)."""
        out: list[str | None] = []
        # The last piece is an unterminated line (empty for well-formed frames): not a line.
        for line in re.split(r"\r\n|\r|\n", raw.decode("utf-8"))[:-1]:
            if not line:
                if self.event or self.data or self.last_id or self.retry is not None:
                    out.append("\n".join(self.data))
                    self.event, self.data, self.retry = None, [], None
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                self.event = value
            elif name == "data":
                self.data.append(value)
            elif name == "id":
                self.last_id = value
            elif name == "retry":
                self.retry = value
        return out


def test_openai_rule_simulator_reproduces_the_known_crash() -> None:
    """Control: the simulator turns ``id:`` plus a comment heartbeat into an empty event."""
    assert OpenAIRule().lines(b'id: 1\ndata: {"a":1}\n\n: ping\n\n') == ['{"a":1}', ""]


def valid_openai_data(data: str) -> bool:
    if data == "[DONE]":
        return True
    json.loads(data)  # raises on anything a client could not parse
    return True


STREAM_END = st.sampled_from(["done", "error"])


@FEW
@given(text=st.text(), cuts=CUTS, end=STREAM_END)
def test_openai_frames_never_produce_an_empty_event(text: str, cuts: list[int], end: str) -> None:
    """Under openai-python's rule, our frames and heartbeats only dispatch JSON or [DONE]."""
    events = as_deltas(text, cuts)
    if end == "error":
        events[-1] = Error(events[-1].seq, "idle_timeout", "stalled")
    encoder = make_encoder("openai", META)
    raw = b"".join(encoder.heartbeat() * 2 + encoder.encode(event) for event in events)
    for line in re.split(rb"\r\n|\r|\n", raw):
        assert not line.startswith((b"id:", b"event:", b"retry:")), line
    dispatched = OpenAIRule().lines(raw)
    assert dispatched[-1] == "[DONE]"
    assert all(data and valid_openai_data(data) for data in dispatched)


@FEW
@given(text=st.text(), cuts=CUTS, end=STREAM_END)
def test_official_openai_sse_decoder_sees_only_json_or_done(
    text: str, cuts: list[int], end: str
) -> None:
    """openai._streaming.SSEDecoder, fed our bytes in random chunks, yields only JSON or [DONE]."""
    streaming = pytest.importorskip("openai._streaming")
    events = as_deltas(text, cuts)
    if end == "error":
        events[-1] = Error(events[-1].seq, "agent_error", "boom")
    raw = encode("openai", events)
    decoded = list(streaming.SSEDecoder().iter_bytes(split(raw, cuts)))
    assert decoded[-1].data == "[DONE]"
    assert all(sse.data and valid_openai_data(sse.data) for sse in decoded)
    if end == "done":
        chunks = [sse.json() for sse in decoded[:-1]]
        content = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
        assert "".join(content) == text


@pytest.mark.parametrize("fmt", ["ollama-chat", "ollama-generate"])
@FEW
@given(text=st.text(), cuts=CUTS)
def test_ollama_chunks_validate_with_official_models(
    fmt: Format, text: str, cuts: list[int]
) -> None:
    """Every Ollama line, heartbeats included, json.loads and validates as the client's model."""
    ollama = pytest.importorskip("ollama")
    model = ollama.ChatResponse if fmt == "ollama-chat" else ollama.GenerateResponse
    raw = encode(fmt, as_deltas(text, cuts))
    for line in raw.decode("ascii").splitlines():
        obj = json.loads(line)
        if fmt == "ollama-chat":
            assert "message" in obj
        model(**obj)


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet=st.characters(exclude_categories=())),
       seq=st.integers(min_value=1, max_value=10**9), tokens=st.integers(0, 10**9))
@example(text="a\u2028b\r\n\ud800\"\\", seq=1, tokens=1)
def test_delta_fast_paths_send_the_general_framing(text: str, seq: int, tokens: int) -> None:
    """Native SSE/NDJSON deltas (framed without a dict) are the bytes the general path makes."""
    from async_core.wire._json import dumps_compact
    from async_core.wire._native import payload

    delta = Delta(seq, text, tokens)
    sse = encode_sse(id=str(seq), event="delta", data=dumps_compact(payload(delta)))
    assert make_encoder("sse", META).encode(delta) == sse
    ndjson = encode_ndjson({"event": "delta", "seq": seq, **payload(delta)})
    assert make_encoder("ndjson", META).encode(delta) == ndjson
