"""The fake upstream speaks the real formats (the official clients read it), and both
twins read it identically."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import ollama
import openai
import pytest

from async_core.agents import AgentRequest, Usage
from async_core.providers import ProviderSettings, UpstreamError, stream_async, stream_sync
from tests.fake_upstream import API_KEY, FakeUpstream, fake

TEXT = "The quick brown fox jumps "


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    """One fake upstream for the module."""
    f = FakeUpstream()
    yield f
    f.stop()


def _user(**script: Any) -> list[dict[str, str]]:
    return [{"role": "user", "content": fake(**script)}]


def test_official_openai_client_streams_text_and_usage(upstream: FakeUpstream) -> None:
    """openai reads the chunks, the finish reason and the usage chunk, then [DONE]."""
    with openai.OpenAI(base_url=upstream.url + "/v1", api_key=API_KEY) as client:
        chunks = list(client.chat.completions.create(
            model="m", messages=_user(tokens=5, pace_ms=2), stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == TEXT
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


def test_official_openai_client_sees_the_error_shapes(upstream: FakeUpstream) -> None:
    """A bad key is openai.AuthenticationError; an in-band error is openai.APIError."""
    with openai.OpenAI(base_url=upstream.url + "/v1", api_key="sk-bad", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="m", messages=_user(), stream=True)  # type: ignore[arg-type]
    with openai.OpenAI(base_url=upstream.url + "/v1", api_key=API_KEY, max_retries=0) as client:
        with pytest.raises(openai.APIError, match="crashed"):
            for _ in client.chat.completions.create(
                    model="m", messages=_user(tokens=4, error_at=2), stream=True):  # type: ignore[arg-type]
                pass
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="m", messages=_user(status=429, retry_after=3),  # type: ignore[arg-type]
                                           stream=True)
        assert caught.value.response.headers["retry-after"] == "3"


def test_official_ollama_client_streams_text_and_counts(upstream: FakeUpstream) -> None:
    """ollama reads every line as a ChatResponse; the last has done and eval_count."""
    client = ollama.Client(host=upstream.url)
    parts = list(client.chat(model="llama3.2", messages=_user(tokens=5), stream=True))
    assert "".join(p.message.content or "" for p in parts) == TEXT
    assert (parts[-1].done, parts[-1].done_reason, parts[-1].eval_count) == (True, "stop", 5)
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="x", messages=_user(status=404, error="model 'x' not found"))
    assert caught.value.status_code == 404 and "not found" in caught.value.error
    with pytest.raises(ollama.ResponseError, match="crashed"):
        for _ in client.chat(model="m", messages=_user(tokens=4, error_at=1), stream=True):
            pass


def _settings(upstream: FakeUpstream) -> ProviderSettings:
    return ProviderSettings(ollama_url=upstream.url, openai_base_url=upstream.url + "/v1",
                            openai_api_key=API_KEY, upstream_idle_timeout=0.3)


def _run_both(upstream: FakeUpstream, provider: str, **script: Any) -> tuple[list[Any], ...]:
    settings = _settings(upstream)
    request = AgentRequest(tuple(_user(**script)))

    def run_sync() -> list[Any]:
        out: list[Any] = []
        try:
            out.extend(stream_sync(provider, request, settings))  # type: ignore[arg-type]
        except UpstreamError as e:
            out.append(e.code)
        return out

    async def run_async() -> list[Any]:
        out: list[Any] = []
        try:
            async for item in stream_async(provider, request, settings):  # type: ignore[arg-type]
                out.append(item)
        except UpstreamError as e:
            out.append(e.code)
        return out

    return run_sync(), asyncio.run(run_async())


@pytest.mark.parametrize("provider", ["ollama", "openai"])
@pytest.mark.parametrize(("script", "last"), [
    ({"tokens": 4}, Usage), ({"tokens": 4, "drop_at": 2}, "upstream_disconnected"),
    ({"tokens": 4, "stall_at": 1}, "upstream_timeout"),
    ({"tokens": 4, "error_at": 3}, "upstream_error"), ({"status": 503}, "upstream_unavailable"),
    ({"status": 401}, "upstream_unauthorized"),
])
def test_both_twins_yield_the_same_items(upstream: FakeUpstream, provider: str,
                                         script: dict[str, Any], last: Any) -> None:
    """requests and httpx twins: same deltas, markers and error codes for every script."""
    sync_items, async_items = _run_both(upstream, provider, **script)
    assert sync_items == async_items
    assert isinstance(sync_items[-1], last) if last is Usage else sync_items[-1] == last


def test_closing_the_sync_twin_closes_the_upstream_connection(upstream: FakeUpstream) -> None:
    """GeneratorExit at the yield: the response is closed and the upstream sees it."""
    key = "sync-close"
    gen = stream_sync("ollama", AgentRequest(tuple(_user(tokens=100, pace_ms=20, key=key))),
                      _settings(upstream))
    assert next(gen) == "The "
    gen.close()
    (record,) = upstream.wait_records(key, lambda rs: rs and rs[0]["client_closed"])
    assert record["tokens"] < 100
