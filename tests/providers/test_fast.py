"""The parsers' fast path (``_fast``) against ``json.loads``: a match never changes an outcome."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from async_core.providers import OllamaChatParser, OpenAIChatParser, UpstreamError
from async_core.providers._fast import ollama_delta, openai_delta
from tests.fake_upstream import _line

from .test_parse import OLLAMA, OPENAI, _openai_chunk

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**12), st.text(max_size=8),
                     st.floats(allow_nan=False, allow_infinity=False))
_KEYS = st.sampled_from(["model", "created_at", "id", "object", "created", "usage", "error",
                         "done", "choices", "message", "index", "x_extra"])
_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)


def _ollama_oracle(line: bytes) -> str | None:
    """What the full path makes of one Ollama line: its content, if a plain delta."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except ValueError:
        return None
    if not isinstance(obj, dict) or "error" in obj or obj.get("done"):
        return None
    message = obj.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else None


def _openai_oracle(data: str) -> str | None:
    """What the full path makes of one OpenAI event: its content, if a plain delta."""
    try:
        chunk = json.loads(data)
    except ValueError:
        return None
    if not isinstance(chunk, dict) or "error" in chunk or isinstance(chunk.get("usage"), dict):
        return None
    choices = chunk.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    delta = choice.get("delta")
    if choice.get("index", 0) != 0 or choice.get("finish_reason") or not isinstance(delta, dict):
        return None
    content = delta.get("content")
    return content if isinstance(content, str) else None


def _dumps(obj: Any, compact: bool, ascii_only: bool) -> str:
    return json.dumps(obj, separators=(",", ":") if compact else None, ensure_ascii=ascii_only)


@st.composite
def _ollama_lines(draw: st.DrawFn) -> bytes:
    extra = draw(st.dictionaries(_KEYS, _SCALARS, max_size=3))
    obj = {"model": "llama3.2", "created_at": "2026-01-01T00:00:00Z", **extra,
           "message": {"role": "assistant", "content": draw(_TEXT)},
           "done": draw(st.sampled_from([False, False, True, None]))}
    text = _dumps(obj, draw(st.booleans()), draw(st.booleans()))
    if draw(st.booleans()):  # a mutation: a character dropped, doubled or replaced
        i = draw(st.integers(0, len(text) - 1))
        text = text[:i] + draw(st.sampled_from(["", text[i] * 2, '"', "\\", ",", "\x01"])) + (
            text[i + 1:])
    return text.encode("utf-8", "surrogatepass")


@st.composite
def _openai_events(draw: st.DrawFn) -> str:
    extra = draw(st.dictionaries(_KEYS, _SCALARS, max_size=3))
    delta: dict[str, Any] = {"content": draw(_TEXT)}
    if draw(st.booleans()):
        delta = {"role": "assistant", **delta}
    choice = {"index": draw(st.sampled_from([0, 0, 1])), "delta": delta, "logprobs": None,
              "finish_reason": draw(st.sampled_from([None, None, "stop"]))}
    obj = {"id": "c", "object": "chat.completion.chunk", **extra, "choices": [choice]}
    if draw(st.booleans()):
        obj["usage"] = None
    text = _dumps(obj, draw(st.booleans()), draw(st.booleans()))
    if draw(st.booleans()):
        i = draw(st.integers(0, len(text) - 1))
        text = text[:i] + draw(st.sampled_from(["", text[i] * 2, '"', "\\", ",", "\x01"])) + (
            text[i + 1:])
    return text


@given(_ollama_lines())
@example(b'{"model":"m","created_at":"t","message":{"role":"assistant","content":"a\\ud800"},'
         b'"done":false}')
@example(b'{"model":"m","message":{"role":"assistant","content":"x"},"done":false,"done":true}')
@example(b'{"error":"e","message":{"role":"assistant","content":"x"},"done":false}')
def test_an_ollama_line_the_fast_path_takes_decodes_as_json_loads_does(line: bytes) -> None:
    """Whenever the fast path returns a content, the full path returns the same."""
    fast = ollama_delta(line)
    if fast is not None:
        assert fast == _ollama_oracle(line)


@given(_openai_events())
@example('{"id":"c","choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}],'
         '"usage":{"prompt_tokens":1}}')
@example('{"choices":[],"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}')
def test_an_openai_event_the_fast_path_takes_decodes_as_json_loads_does(data: str) -> None:
    """Whenever the fast path returns a content, the full path returns the same."""
    fast = openai_delta(data)
    if fast is not None:
        assert fast == _openai_oracle(data)


def test_the_fixtures_plain_deltas_take_the_fast_path() -> None:
    """The provider tests' and the fake upstream's delta lines all match, with their
    content; their terminal, usage and role-only lines go the full way."""
    lines = [*OLLAMA.splitlines(), _line({"model": "m", "created_at": "t", "message": {
        "role": "assistant", "content": "tok \u00e9\n"}, "done": False}).rstrip(b"\n")]
    assert [ollama_delta(line) for line in lines] == ["Hel", "lo \u2028", None, "tok \u00e9\n"]
    events = [e.removeprefix(b"data: ").decode() for e in OPENAI.split(b"\n\n") if
              e.startswith(b"data: ")]
    assert [openai_delta(e) for e in events] == ["", "Hel", "lo \u2028", None, None]
    vllm = _openai_chunk({"content": "x"}).removeprefix(b"data: ").strip().decode()
    assert openai_delta(vllm) == "x"


def test_a_line_after_the_fast_ones_still_gets_the_full_path_rules() -> None:
    """A BOM is allowed only at the stream's start, even when fast lines came first."""
    first = OLLAMA.splitlines(keepends=True)[0]
    assert OllamaChatParser().feed(b"\xef\xbb\xbf" + first) == ["Hel"]
    parser = OllamaChatParser()
    assert parser.feed(first) == ["Hel"]
    with pytest.raises(UpstreamError):  # the full path's error, as without the fast path
        parser.feed(b"\xef\xbb\xbf" + first)
    assert OpenAIChatParser().feed(b"data: " + json.dumps({"choices": [{"delta": {
        "content": "y"}}]}).encode() + b"\n\n") == ["y"]
