"""Encoders of async_core.wire: exact frames per format, and the official clients' view."""

from __future__ import annotations

import ast
import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import async_core.wire as wire
from async_core.wire import (
    FORMATS,
    MEDIA_TYPES,
    Delta,
    Done,
    Error,
    Event,
    Format,
    NDJSONDecoder,
    SSEDecoder,
    SSEMessage,
    State,
    StreamMeta,
    buffered_body,
    encode_ndjson,
    encode_sse,
    error_body,
    make_encoder,
)

NOW = 1_700_000_000.123456
META = StreamMeta(
    stream_id="s1", conversation_id="c1", model="demo", created=1_700_000_000.9, clock=lambda: NOW
)
STREAM: list[Event] = [
    Delta(seq=1, text="Hel", tokens=1),
    State(seq=2, data={"step": 1}),
    Delta(seq=3, text="lo", tokens=2),
    Done(
        seq=4, finish_reason="stop", tokens=2, ttfc_ms=10.0, duration_ms=30.0, conversation_id="c1"
    ),
]
ERROR = Error(seq=5, code="idle_timeout", message="no output for 30 s", retryable=True)


def encode_all(fmt: Format, events: Sequence[Event], meta: StreamMeta = META) -> bytes:
    encoder = make_encoder(fmt, meta)
    return b"".join(encoder.encode(event) for event in events)


# --- package shape ---------------------------------------------------------------------


def test_public_api_is_pinned() -> None:
    """The package exports exactly this list of names, and each one resolves."""
    assert sorted(wire.__all__) == sorted([
        "FORMATS", "MEDIA_TYPES", "Delta", "Done", "Encoder", "Error", "Event", "FinishReason",
        "Format", "NDJSONDecoder", "SSEDecoder", "SSEMessage", "State", "StreamMeta",
        "TerminalEvent", "WireDecodeError", "buffered_body", "encode_ndjson", "encode_sse",
        "error_body", "event_kind", "is_terminal", "make_encoder", "payload",
    ])  # fmt: skip
    for name in wire.__all__:
        assert getattr(wire, name) is not None


def test_wire_imports_only_the_standard_library() -> None:
    """Every module of the wire package imports only stdlib modules or its siblings."""
    for path in Path(wire.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in sys.stdlib_module_names, f"{path.name}: {name}"


def test_media_types() -> None:
    """Each format maps to its media type, and every encoder reports the same one."""
    assert MEDIA_TYPES == {
        "sse": "text/event-stream",
        "ndjson": "application/x-ndjson",
        "text": "text/plain; charset=utf-8",
        "openai": "text/event-stream",
        "ollama-chat": "application/x-ndjson",
        "ollama-generate": "application/x-ndjson",
    }
    for fmt in FORMATS:
        assert make_encoder(fmt, META).media_type == MEDIA_TYPES[fmt]


def test_make_encoder_rejects_unknown_format() -> None:
    """An unknown format name raises ValueError."""
    with pytest.raises(ValueError, match="unknown wire format"):
        make_encoder("xml", META)  # type: ignore[arg-type]


# --- encode_sse / encode_ndjson --------------------------------------------------------


def test_encode_sse_field_order_and_terminator() -> None:
    """Fields come as comment, id, event, retry, data and the frame ends with a blank line."""
    frame = encode_sse(data="x", event="e", id="1", retry=5, comment="c")
    assert frame == b": c\nid: 1\nevent: e\nretry: 5\ndata: x\n\n"


def test_encode_sse_splits_multiline_data() -> None:
    """CR, LF and CRLF inside data each start a new data line."""
    assert encode_sse(data="a\r\nb\rc\nd") == b"data: a\ndata: b\ndata: c\ndata: d\n\n"


def test_encode_sse_strips_newlines_from_id_and_event() -> None:
    """CR and LF are removed from id and event (and NUL from id), so they cannot inject fields."""
    frame = encode_sse(event="a\r\nevent: b", id="1\n\0data: x", data="y")
    assert frame == b"id: 1data: x\nevent: aevent: b\ndata: y\n\n"
    assert SSEDecoder().feed(frame) == [SSEMessage(event="aevent: b", data="y", id="1data: x")]


def test_encode_sse_comment_only_frame() -> None:
    """A comment-only frame is ``: text`` plus a blank line."""
    assert encode_sse(comment="ping") == b": ping\n\n"


def test_encode_sse_rejects_empty_frame_and_negative_retry() -> None:
    """A frame with no field, or a negative retry, is refused."""
    with pytest.raises(ValueError, match="at least one field"):
        encode_sse()
    with pytest.raises(ValueError, match="retry"):
        encode_sse(retry=-1)


def test_encode_ndjson_is_compact_ascii() -> None:
    """NDJSON lines are compact JSON with every non-ASCII character escaped."""
    assert encode_ndjson({"a": "é\u2028", "b": [1, 2]}) == b'{"a":"\\u00e9\\u2028","b":[1,2]}\n'


# --- native formats --------------------------------------------------------------------


def test_native_sse_frames() -> None:
    """Native SSE numbers events with id, names them with event and puts the payload in data."""
    assert encode_all("sse", [*STREAM[:2], ERROR]) == (
        b'id: 1\nevent: delta\ndata: {"text":"Hel","tokens":1}\n\n'
        b'id: 2\nevent: state\ndata: {"step":1}\n\n'
        b'id: 5\nevent: error\ndata: {"code":"idle_timeout","message":"no output for 30 s",'
        b'"retryable":true}\n\n'
    )


def test_native_sse_done_payload_with_and_without_usage() -> None:
    """The done payload has the five contract keys, plus usage only when known."""
    done = STREAM[-1]
    (message,) = SSEDecoder().feed(make_encoder("sse", META).encode(done))
    assert message.event == "done"
    assert message.id == "4"
    assert json.loads(message.data) == {
        "finish_reason": "stop", "tokens": 2, "ttfc_ms": 10.0, "duration_ms": 30.0,
        "conversation_id": "c1",
    }  # fmt: skip
    with_usage = Done(4, "length", 2, None, 30.0, "c1", usage={"prompt_tokens": 3})
    (message,) = SSEDecoder().feed(make_encoder("sse", META).encode(with_usage))
    assert json.loads(message.data)["usage"] == {"prompt_tokens": 3}
    assert json.loads(message.data)["ttfc_ms"] is None


def test_native_sse_escapes_line_separators_and_lone_surrogates() -> None:
    """SSE JSON keeps other non-ASCII raw but escapes U+2028/2029/0085 and lone surrogates."""
    frame = make_encoder("sse", META).encode(Delta(1, "é\u2028\u2029\u0085\ud800", 1))
    assert "é".encode() in frame
    assert b"\\u2028\\u2029\\u0085\\ud800" in frame
    (message,) = SSEDecoder().feed(frame)
    assert json.loads(message.data)["text"] == "é\u2028\u2029\u0085\ud800"


def test_native_sse_heartbeat_is_a_comment() -> None:
    """The native SSE heartbeat is the comment ``: ping``."""
    assert make_encoder("sse", META).heartbeat() == b": ping\n\n"


def test_native_ndjson_lines() -> None:
    """Native NDJSON puts event and seq first, then the same payload as SSE."""
    lines = encode_all("ndjson", STREAM).splitlines()
    assert lines[0] == b'{"event":"delta","seq":1,"text":"Hel","tokens":1}'
    assert lines[1] == b'{"event":"state","seq":2,"step":1}'
    assert json.loads(lines[3]) == {
        "event": "done", "seq": 4, "finish_reason": "stop", "tokens": 2, "ttfc_ms": 10.0,
        "duration_ms": 30.0, "conversation_id": "c1",
    }  # fmt: skip
    assert make_encoder("ndjson", META).heartbeat() == b'{"event":"ping"}\n'


def test_native_ndjson_envelope_keys_win_over_state_data() -> None:
    """A state whose data has its own event/seq keys cannot hide the envelope."""
    line = make_encoder("ndjson", META).encode(State(7, {"event": "x", "seq": 0, "k": 1}))
    assert json.loads(line) == {"event": "state", "seq": 7, "k": 1}


def test_text_format() -> None:
    """Plain text carries the deltas' text only, an error line on error, and no heartbeat."""
    assert encode_all("text", STREAM) == b"Hello"
    error_line = b"\n[error] idle_timeout: no output for 30 s\n"
    assert make_encoder("text", META).encode(ERROR) == error_line
    assert make_encoder("text", META).heartbeat() == b""


# --- OpenAI ----------------------------------------------------------------------------


def openai_chunks(raw: bytes) -> list[Any]:
    return ["[DONE]" if m.data == "[DONE]" else json.loads(m.data) for m in SSEDecoder().feed(raw)]


def test_openai_chunks() -> None:
    """Role on the first delta only, state skipped, empty finish chunk, then [DONE]."""
    raw = encode_all("openai", STREAM)
    chunks = openai_chunks(raw)
    base = {"id": "chatcmpl-s1", "object": "chat.completion.chunk", "created": 1700000000}
    assert chunks == [
        {**base, "model": "demo", "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}]},
        {**base, "model": "demo", "choices": [
            {"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]},
        {**base, "model": "demo", "choices": [
            {"index": 0, "delta": {}, "finish_reason": "stop"}]},
        "[DONE]",
    ]  # fmt: skip
    assert raw.endswith(b"data: [DONE]\n\n")


def test_openai_frames_carry_only_data_lines() -> None:
    """OpenAI frames never contain id:, event: or retry: lines, whatever the events."""
    raw = encode_all("openai", [*STREAM, ERROR], replace(META, include_usage=True))
    raw += make_encoder("openai", META).heartbeat()
    for line in re.split(rb"\r\n|\r|\n", raw):
        assert line == b"" or line.startswith((b"data: ", b": ")), line


def test_openai_usage_chunk() -> None:
    """With include_usage, a chunk with empty choices and usage follows the finish chunk."""
    meta = replace(META, include_usage=True)
    chunks = openai_chunks(encode_all("openai", STREAM, meta))
    assert chunks[-2]["choices"] == []
    assert chunks[-2]["usage"] == {"prompt_tokens": 0, "completion_tokens": 2, "total_tokens": 2}
    done = Done(1, "length", 5, None, 1.0, "c1", usage={"prompt_tokens": 7, "completion_tokens": 4})
    chunks = openai_chunks(make_encoder("openai", meta).encode(done))
    assert chunks[-2]["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
    assert chunks[-3]["choices"][0]["finish_reason"] == "length"


def test_openai_empty_reply_still_announces_role() -> None:
    """A stream ending without any delta sends one empty assistant delta before finishing."""
    chunks = openai_chunks(make_encoder("openai", META).encode(STREAM[-1]))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["finish_reason"] == "stop"


def test_openai_error_then_done() -> None:
    """An error is a data: {"error": ...} frame followed by data: [DONE]."""
    chunks = openai_chunks(make_encoder("openai", META).encode(ERROR))
    assert chunks == [
        {"error": {"message": "no output for 30 s", "type": "timeout", "code": "idle_timeout"}},
        "[DONE]",
    ]
    agent_error = Error(1, "agent_error", "boom")
    assert openai_chunks(make_encoder("openai", META).encode(agent_error))[0]["error"]["type"] == (
        "server_error"
    )


def test_openai_cancelled_maps_to_stop() -> None:
    """Finish reasons OpenAI does not know (cancelled, error) are reported as stop."""
    done = Done(1, "cancelled", 0, None, 1.0, "c1")
    finish_chunk = openai_chunks(encode_all("openai", [Delta(1, "a", 1), done]))[1]
    assert finish_chunk["choices"][0]["finish_reason"] == "stop"


# --- Ollama ----------------------------------------------------------------------------


def test_ollama_chat_lines() -> None:
    """Chat chunks carry message; the last has done, done_reason and stats in nanoseconds."""
    objs = NDJSONDecoder().feed(encode_all("ollama-chat", STREAM))
    stamp = "2023-11-14T22:13:20.123456Z"
    assert objs[0] == {
        "model": "demo", "created_at": stamp,
        "message": {"role": "assistant", "content": "Hel"}, "done": False,
    }  # fmt: skip
    assert len(objs) == 3
    assert objs[2] == {
        "model": "demo", "created_at": stamp, "message": {"role": "assistant", "content": ""},
        "done": True, "done_reason": "stop", "total_duration": 30_000_000, "load_duration": 0,
        "prompt_eval_count": 0, "prompt_eval_duration": 0, "eval_count": 2,
        "eval_duration": 20_000_000,
    }  # fmt: skip


def test_ollama_generate_lines() -> None:
    """Generate chunks carry response instead of message."""
    objs = NDJSONDecoder().feed(encode_all("ollama-generate", STREAM))
    assert [o["response"] for o in objs] == ["Hel", "lo", ""]
    assert all("message" not in o for o in objs)


@pytest.mark.parametrize("fmt", ["ollama-chat", "ollama-generate"])
def test_ollama_heartbeat_is_a_complete_empty_chunk(fmt: Format) -> None:
    """The Ollama keepalive is a full chunk with empty text and done false, never blank or {}."""
    (obj,) = NDJSONDecoder().feed(make_encoder(fmt, META).heartbeat())
    text = obj["message"]["content"] if fmt == "ollama-chat" else obj["response"]
    assert text == ""
    assert obj["done"] is False
    assert obj["model"] == "demo"


def test_ollama_error_line() -> None:
    """An error after the headers is the line {"error": message}."""
    assert make_encoder("ollama-chat", META).encode(ERROR) == b'{"error":"no output for 30 s"}\n'


# --- buffered and error bodies ---------------------------------------------------------


def test_buffered_native_body() -> None:
    """sse, ndjson and text all give the same native body with text, states and stats."""
    expected = {
        "stream_id": "s1", "conversation_id": "c1", "model": "demo", "text": "Hello",
        "finish_reason": "stop", "tokens": 2, "ttfc_ms": 10.0, "duration_ms": 30.0,
        "states": [{"step": 1}],
    }  # fmt: skip
    for fmt in ("sse", "ndjson", "text"):
        assert buffered_body(fmt, META, STREAM) == expected


def test_buffered_openai_body() -> None:
    """The OpenAI body is a chat.completion with the whole message and usage."""
    body = buffered_body("openai", META, STREAM)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 2, "total_tokens": 2}


def test_buffered_ollama_bodies() -> None:
    """Ollama bodies are the final chunk with the whole text and done true."""
    chat = buffered_body("ollama-chat", META, STREAM)
    assert chat["message"] == {"role": "assistant", "content": "Hello"}
    assert chat["done"] is True
    generate = buffered_body("ollama-generate", META, STREAM)
    assert generate["response"] == "Hello"
    assert generate["eval_count"] == 2


def test_buffered_body_requires_done() -> None:
    """A stream that does not end in Done has no buffered body."""
    with pytest.raises(ValueError, match="Done"):
        buffered_body("sse", META, [*STREAM[:3], ERROR])
    with pytest.raises(ValueError, match="Done"):
        buffered_body("sse", META, [])


def test_error_body() -> None:
    """HTTP error bodies are nested objects, except on Ollama routes where error is a string.

    ``type`` is the code, as every error body the servers send has it
    (``tests/test_error_bodies.py`` pins those bytes).
    """
    assert error_body("rate_limited", "slow down") == {
        "error": {"code": "rate_limited", "message": "slow down", "type": "rate_limited"}
    }
    assert error_body("x", "m", typed=False) == {"error": {"code": "x", "message": "m"}}
    assert error_body("x", "m", fmt="ollama-chat") == {"error": "m"}


def test_buffered_ollama_and_openai_bodies_validate_with_official_types() -> None:
    """The official clients' response models accept our buffered bodies."""
    ollama = pytest.importorskip("ollama")
    chat_completion = pytest.importorskip("openai.types.chat").ChatCompletion
    ollama.ChatResponse(**buffered_body("ollama-chat", META, STREAM))
    ollama.GenerateResponse(**buffered_body("ollama-generate", META, STREAM))
    chat_completion.model_validate(buffered_body("openai", META, STREAM))


# --- the official clients, over an in-memory transport ---------------------------------


def chunked(raw: bytes, size: int = 7) -> Iterator[bytes]:
    for i in range(0, len(raw), size):
        yield raw[i : i + size]


def with_heartbeats(fmt: Format, events: Sequence[Event]) -> bytes:
    """Encode a stream with two heartbeats before every event (none after the terminal one)."""
    encoder = make_encoder(fmt, META)
    out: list[bytes] = []
    for event in events:
        out += [encoder.heartbeat(), encoder.heartbeat(), encoder.encode(event)]
    return b"".join(out)


def mock_client_transport(raw: bytes, media_type: str) -> Any:
    httpx = pytest.importorskip("httpx")

    def handler(request: Any) -> Any:
        headers = {"content-type": media_type}
        return httpx.Response(200, headers=headers, content=chunked(raw))

    return httpx.MockTransport(handler)


def test_official_openai_client_reads_our_stream() -> None:
    """openai.OpenAI streams our chunks (with heartbeats) into the text, finish and usage."""
    openai = pytest.importorskip("openai")
    httpx = pytest.importorskip("httpx")
    meta = replace(META, include_usage=True)
    encoder = make_encoder("openai", meta)
    raw = b"".join(encoder.heartbeat() + encoder.encode(event) for event in STREAM)
    transport = mock_client_transport(raw, "text/event-stream")
    client = openai.OpenAI(
        api_key="x", base_url="http://test/v1", http_client=httpx.Client(transport=transport)
    )
    stream = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2


def test_official_openai_client_raises_on_in_band_error() -> None:
    """Our in-band error frame surfaces as openai.APIError with our message."""
    openai = pytest.importorskip("openai")
    httpx = pytest.importorskip("httpx")
    raw = with_heartbeats("openai", [STREAM[0], ERROR])
    transport = mock_client_transport(raw, "text/event-stream")
    client = openai.OpenAI(
        api_key="x", base_url="http://test/v1", http_client=httpx.Client(transport=transport)
    )
    stream = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError, match="no output for 30 s"):
        list(stream)


@pytest.mark.parametrize("fmt", ["ollama-chat", "ollama-generate"])
def test_official_ollama_client_reads_our_stream(fmt: Format) -> None:
    """ollama.Client streams our chunks (with heartbeats) into the text and done_reason."""
    ollama = pytest.importorskip("ollama")
    raw = with_heartbeats(fmt, STREAM)
    transport = mock_client_transport(raw, MEDIA_TYPES[fmt])
    client = ollama.Client(host="http://test", transport=transport)
    if fmt == "ollama-chat":
        messages = [{"role": "user", "content": "hi"}]
        parts = list(client.chat(model="demo", messages=messages, stream=True))
        text = "".join(p.message.content or "" for p in parts)
    else:
        parts = list(client.generate(model="demo", prompt="hi", stream=True))
        text = "".join(p.response or "" for p in parts)
    assert text == "Hello"
    assert parts[-1].done
    assert parts[-1].done_reason == "stop"


def test_official_ollama_client_raises_on_in_band_error() -> None:
    """Our in-band error line surfaces as ollama.ResponseError with our message."""
    ollama = pytest.importorskip("ollama")
    raw = with_heartbeats("ollama-chat", [STREAM[0], ERROR])
    transport = mock_client_transport(raw, "application/x-ndjson")
    client = ollama.Client(host="http://test", transport=transport)
    with pytest.raises(ollama.ResponseError, match="no output for 30 s"):
        list(client.chat(model="demo", messages=[{"role": "user", "content": "hi"}], stream=True))
