"""The providers' sans-IO protocol: request building, chunk parsing, error mapping."""

from __future__ import annotations

import json

import pytest

from async_core.agents import AgentRequest, Finish, Usage
from async_core.exceptions import BadRequest
from async_core.providers import (
    OllamaChatParser,
    OpenAIChatParser,
    ProviderSettings,
    UpstreamError,
    build_call,
    from_status,
    parse_retry_after,
    validate_options,
)

OLLAMA = (b'{"model":"m","created_at":"t","message":{"role":"assistant","content":"Hel"},'
          b'"done":false}\n'
          b'{"model":"m","created_at":"t","message":{"role":"assistant","content":"lo \\u2028"},'
          b'"done":false}\n'
          b'{"model":"m","created_at":"t","message":{"role":"assistant","content":""},'
          b'"done_reason":"length","done":true,"prompt_eval_count":7,"eval_count":2}\n')


def _openai_chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
    return b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": delta, "finish_reason": finish}], "usage": None}).encode() + b"\n\n"


OPENAI = (_openai_chunk({"role": "assistant", "content": ""}) + b": keepalive\n\n"
          + _openai_chunk({"content": "Hel"}) + _openai_chunk({"content": "lo \u2028"})
          + _openai_chunk({}, "stop")
          + b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}'
          b"\r\n\r\ndata: [DONE]\n\n")


def _feed_split(parser: OllamaChatParser | OpenAIChatParser, data: bytes,
                at: int) -> list[object]:
    return [*parser.feed(data[:at]), *parser.feed(data[at:]), *parser.close()]


@pytest.mark.parametrize("at", range(0, len(OLLAMA) + 1, 7))
def test_ollama_stream_parses_the_same_whatever_the_chunking(at: int) -> None:
    """Deltas, the finish reason and the token counts, with the body split anywhere."""
    items = _feed_split(OllamaChatParser(), OLLAMA, at)
    assert items == ["Hel", "lo \u2028", Finish("length"), Usage(7, 2)]


@pytest.mark.parametrize("at", range(0, len(OPENAI) + 1, 7))
def test_openai_stream_parses_the_same_whatever_the_chunking(at: int) -> None:
    """Role chunk and comments skipped; usage from the choice-less last chunk."""
    items = _feed_split(OpenAIChatParser(), OPENAI, at)
    assert items == ["Hel", "lo \u2028", Finish("stop"), Usage(7, 2)]


@pytest.mark.parametrize(("parser", "data"), [
    (OllamaChatParser, b'{"error":"model crashed"}\n'),
    (OpenAIChatParser, b'data: {"error":{"message":"model crashed","type":"server_error"}}\n\n'),
])
def test_in_band_errors_of_both_shapes_raise_upstream_error(parser: type, data: bytes) -> None:
    """Either provider's in-band error object becomes upstream_error with its message."""
    with pytest.raises(UpstreamError) as caught:
        parser().feed(data)
    assert caught.value.code == "upstream_error"
    assert "model crashed" in caught.value.message


@pytest.mark.parametrize("parser", [OllamaChatParser, OpenAIChatParser])
def test_a_body_without_its_terminal_chunk_is_a_disconnect(parser: type) -> None:
    """EOF before done/[DONE]: upstream_disconnected, retryable (nothing may be lost)."""
    p = parser()
    p.feed(OLLAMA[:40] if parser is OllamaChatParser else OPENAI[:60])
    with pytest.raises(UpstreamError) as caught:
        p.close()
    assert caught.value.code == "upstream_disconnected"


@pytest.mark.parametrize(("status", "body", "code", "retryable"), [
    (401, b'{"error":{"message":"Incorrect API key provided","type":"invalid_request_error",'
          b'"code":"invalid_api_key"}}', "upstream_unauthorized", False),
    (404, b'{"error":"model \\"x\\" not found, try pulling it first"}', "upstream_not_found",
     False),
    (429, b'{"error":{"message":"Rate limit reached","type":"requests"}}',
     "upstream_rate_limited", True),
    (503, b"<html>Service Unavailable</html>", "upstream_unavailable", True),
    (400, b'{"error":"invalid options"}', "upstream_bad_request", False),
])
def test_http_errors_of_both_providers_map_to_clear_codes(status: int, body: bytes, code: str,
                                                          retryable: bool) -> None:
    """Status and body shape give the code, the retry decision and a readable message."""
    error = from_status("openai", status, body, None, max_retry_after=10)
    assert (error.code, error.retryable, error.upstream_status) == (code, retryable, status)
    assert str(status) in error.message and len(error.message) < 400


def test_retry_after_is_honoured_up_to_the_limit() -> None:
    """Retry-After as seconds or an HTTP date; a longer wait than allowed is not retried."""
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None
    short = from_status("ollama", 429, b"{}", "2", max_retry_after=10)
    assert (short.retryable, short.retry_after) == (True, 2.0)
    assert from_status("ollama", 429, b"{}", "60", max_retry_after=10).retryable is False


def test_both_twins_send_the_same_request_and_the_key_stays_hidden() -> None:
    """OpenAI gets the bearer key and asks for usage; the key is in no repr."""
    settings = ProviderSettings(openai_base_url="http://h/v1/", openai_api_key="sk-secret")
    request = AgentRequest(({"role": "user", "content": "hi"},),
                           {"model": "gpt-4o-mini", "temperature": 0.5, "num_predict": 9})
    call = build_call("openai", request, settings, via="httpx")
    body = json.loads(call.body)
    assert call.url == "http://h/v1/chat/completions"
    assert call.headers["Authorization"] == "Bearer sk-secret"
    assert body["stream_options"] == {"include_usage": True}
    assert (body["temperature"], body["max_tokens"]) == (0.5, 9)
    assert "sk-secret" not in repr(settings) and "sk-secret" not in repr(call)
    ollama = json.loads(build_call("ollama", request, settings).body)
    assert ollama["options"] == {"temperature": 0.5, "num_predict": 9}


def test_settings_come_from_the_environment() -> None:
    """Every setting reads STREAMBRIDGE_<NAME>; a bad number names its variable."""
    settings = ProviderSettings.from_env({"STREAMBRIDGE_OLLAMA_MODEL": "qwen3",
                                          "STREAMBRIDGE_OLLAMA_MODELS": "a, b",
                                          "STREAMBRIDGE_UPSTREAM_IDLE_TIMEOUT": "2.5"})
    assert settings.allowed("ollama") == ("qwen3", frozenset({"qwen3", "a", "b"}))
    assert settings.upstream_idle_timeout == 2.5
    with pytest.raises(ValueError, match="STREAMBRIDGE_UPSTREAM_CONNECT_TIMEOUT"):
        ProviderSettings.from_env({"STREAMBRIDGE_UPSTREAM_CONNECT_TIMEOUT": "x"})


def test_options_outside_what_the_settings_allow_are_a_400() -> None:
    """Unknown options and models outside the allowlist are refused before streaming."""
    with pytest.raises(BadRequest, match="unknown"):
        validate_options("ollama", {"upstream_url": "http://evil"})
    with pytest.raises(BadRequest, match="not allowed"):
        validate_options("openai", {"model": "gpt-5-pro"})
    assert validate_options("ollama", {"temperature": 0.1}) == {"temperature": 0.1}


@pytest.mark.parametrize(("parser", "data"), [
    (OllamaChatParser, OLLAMA.split(b"\n", 2)[0] + b"\n" + OLLAMA.split(b"\n", 2)[1]
     + b'\n{"error":"model crashed"}\n'),
    (OpenAIChatParser, _openai_chunk({"content": "Hel"}) + _openai_chunk({"content": "lo \u2028"})
     + b'data: {"error":{"message":"model crashed"}}\n\n'),
])
def test_deltas_before_an_error_in_the_same_chunk_come_out_first(parser: type,
                                                                 data: bytes) -> None:
    """One read holding deltas then an in-band error: the deltas are returned, the error
    raised next (a coalesced read loses nothing)."""
    p = parser()
    assert p.feed(data) == ["Hel", "lo \u2028"]
    assert p.error is not None and p.error.code == "upstream_error"
    with pytest.raises(UpstreamError, match="model crashed"):
        p.close()
