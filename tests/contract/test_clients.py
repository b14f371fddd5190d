"""The official openai and ollama clients work unchanged against every path."""

from __future__ import annotations

from collections.abc import Iterator

import ollama
import openai
import pytest

from async_core.demo import demo_text
from tests.contract._loops import path_id_on_both_loops  # noqa: F401 - fixture
from tests.servers import Server

TRICKY = "line one\u2028line two\u2029para\u0085next 😀 end. "
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
def oai(server: Server) -> Iterator[openai.OpenAI]:
    """The official OpenAI client pointed at the server."""
    with openai.OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
def oll(server: Server) -> Iterator[ollama.Client]:
    """The official Ollama client pointed at the server."""
    with ollama.Client(host=server.base_url) as c:
        yield c


def test_openai_client_stream_gets_the_exact_text(oai: openai.OpenAI) -> None:
    """Streaming chat.completions yields the demo text and finish_reason stop."""
    opts = {"tokens": 12, "interval_ms": 2}
    chunks = list(oai.chat.completions.create(
        model="demo", messages=MESSAGES, stream=True, extra_body={"options": opts}))  # type: ignore[arg-type]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == demo_text(opts)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_openai_client_survives_heartbeats_and_line_separators(oai: openai.OpenAI) -> None:
    """A slow stream crossing several heartbeats, with U+2028 in the text, reads cleanly."""
    opts = {"tokens": 6, "interval_ms": 400, "text": TRICKY}
    stream = oai.chat.completions.create(
        model="demo", messages=MESSAGES, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True}, extra_body={"options": opts})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == demo_text(opts)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


def test_openai_client_non_stream(oai: openai.OpenAI) -> None:
    """Non-streaming chat.completions returns one completion with usage."""
    opts = {"tokens": 5}
    reply = oai.chat.completions.create(
        model="demo", messages=MESSAGES, extra_body={"options": opts})  # type: ignore[arg-type]
    assert reply.choices[0].message.content == demo_text(opts)
    assert reply.usage is not None and reply.usage.completion_tokens == 5


def test_openai_client_sees_a_mid_stream_failure_as_api_error(oai: openai.OpenAI) -> None:
    """An agent failing after its first output surfaces as openai.APIError."""
    stream = oai.chat.completions.create(
        model="demo", messages=MESSAGES, stream=True,  # type: ignore[arg-type]
        extra_body={"options": {"tokens": 5, "fail_at": 2}})
    with pytest.raises(openai.APIError, match="planned failure"):
        list(stream)


def test_openai_client_unknown_model_is_not_found(oai: openai.OpenAI) -> None:
    """An unknown model is a 404 before the stream starts."""
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="nope", messages=MESSAGES,  # type: ignore[arg-type]
                                                stream=True)


def test_ollama_client_chat_stream_and_non_stream(oll: ollama.Client) -> None:
    """ollama.Client.chat gets the demo text, streamed and not."""
    client = oll
    opts = {"tokens": 8, "interval_ms": 300, "text": TRICKY}
    parts = list(client.chat(model="demo", messages=MESSAGES, stream=True, options=opts))
    assert "".join(p.message.content or "" for p in parts) == demo_text(opts)
    assert parts[-1].done and parts[-1].done_reason == "stop"
    assert parts[-1].eval_count == 8
    whole = client.chat(model="demo", messages=MESSAGES, options={"tokens": 4})
    assert whole.message.content == demo_text({"tokens": 4})


def test_ollama_client_generate_stream_and_non_stream(oll: ollama.Client) -> None:
    """ollama.Client.generate gets the demo text, streamed and not."""
    client = oll
    opts = {"tokens": 7, "text": TRICKY, "interval_ms": 1}
    parts = list(client.generate(model="demo", prompt="hi", stream=True, options=opts))
    assert "".join(p.response for p in parts) == demo_text(opts)
    assert parts[-1].done
    whole = client.generate(model="demo", prompt="hi", options={"tokens": 3})
    assert whole.response == demo_text({"tokens": 3})


def test_ollama_client_sees_a_mid_stream_failure_as_response_error(oll: ollama.Client) -> None:
    """An in-band error line surfaces as ollama.ResponseError."""
    client = oll
    with pytest.raises(ollama.ResponseError, match="planned failure"):
        list(client.chat(model="demo", messages=MESSAGES, stream=True,
                         options={"tokens": 5, "fail_at": 1}))
