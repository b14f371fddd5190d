"""The providers' protocol, sans-IO: the upstream request, and its chunks to agent items.

Both twins (``requests`` and ``httpx``) build their request with :func:`build_call`
and feed every body chunk they read to a parser from :func:`make_parser`; the
parsers sit on ``async_core.wire``'s incremental decoders, so the framing rules
(SSE line endings, NDJSON split anywhere, UTF-8 across chunks) are written once.

A parser turns chunks into agent items (``str`` deltas, ``Finish``, ``Usage``),
raises :class:`UpstreamError` for an in-band error or malformed framing, and says
when the upstream's terminal chunk arrived (``finished``); ``close()`` at EOF
raises ``upstream_disconnected`` if it never did.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..agents import AgentItem, AgentRequest, Finish, Usage
from ..wire import NDJSONDecoder, SSEDecoder, WireDecodeError
from . import _errors as errors
from ._fast import ollama_delta, openai_delta
from ._settings import ProviderSettings

Provider = Literal["ollama", "openai"]
PROVIDERS: tuple[Provider, ...] = ("ollama", "openai")
MAX_LINE = 1 << 20  # one upstream line or event; more is a broken upstream
USER_AGENT = "streambridge-provider/0.1"

# Sampling options a request may pass through, by name on our side -> name upstream.
_OLLAMA_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                   "seed": "seed", "num_predict": "num_predict", "max_tokens": "num_predict",
                   "stop": "stop", "num_ctx": "num_ctx"}
_OPENAI_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed",
                   "max_tokens": "max_tokens", "num_predict": "max_tokens", "stop": "stop",
                   "presence_penalty": "presence_penalty",
                   "frequency_penalty": "frequency_penalty"}


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """One upstream request: what both twins send, byte for byte.

    ``headers`` may hold the API key: never log this object (its repr hides them).
    """

    provider: Provider
    url: str
    body: bytes
    headers: Mapping[str, str]

    def __repr__(self) -> str:
        return f"UpstreamCall({self.provider!r}, {self.url!r}, {len(self.body)} bytes)"


def build_call(provider: Provider, request: AgentRequest, settings: ProviderSettings,
               via: str = "") -> UpstreamCall:
    """The streaming chat request for ``provider`` (options already validated).

    Args:
        provider: which upstream API.
        request: the agent request (messages, options with ``model`` and sampling).
        settings: URLs, default model, API key.
        via: the HTTP library sending it, named in ``User-Agent`` (the upstream's logs,
            and the tests, tell the twins apart by it).
    """
    opts = request.options
    model = opts.get("model") or settings.allowed(provider)[0]
    messages = [{"role": m["role"], "content": m["content"]} for m in request.messages]
    headers = {"Content-Type": "application/json",
               "User-Agent": f"{USER_AGENT} {via}".strip()}
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
    if provider == "ollama":
        sampling = {up: opts[ours] for ours, up in _OLLAMA_OPTIONS.items() if ours in opts}
        if sampling:
            body["options"] = sampling
        url = settings.ollama_url.rstrip("/") + "/api/chat"
        headers["Accept"] = "application/x-ndjson"
    else:
        body.update({up: opts[ours] for ours, up in _OPENAI_OPTIONS.items() if ours in opts})
        body["stream_options"] = {"include_usage": True}  # token counts for `done`
        url = settings.openai_base_url.rstrip("/") + "/chat/completions"
        headers["Accept"] = "text/event-stream"
        if settings.openai_api_key:
            headers["Authorization"] = "Bearer " + settings.openai_api_key
    return UpstreamCall(provider, url, json.dumps(body).encode(), headers)


class ChunkParser(Protocol):
    """Upstream body chunks in, agent items out (one per provider).

    Items a chunk completes before an error are returned first: the error is then
    held in ``error`` and raised by the next ``feed`` or ``close`` (a twin raises it
    as soon as it has passed those items on). Nothing decoded is lost.
    """

    finished: bool
    error: errors.UpstreamError | None

    def feed(self, data: bytes) -> list[AgentItem]:
        """Consume body bytes; return the items they complete.

        Raises:
            UpstreamError: an in-band error, or framing that does not parse.
        """
        ...

    def close(self) -> list[AgentItem]:
        """The body ended: return what is left, or raise if the stream was cut short."""
        ...


class _Parser:
    """What both parsers share: the items before an error come out first."""

    finished = False
    error: errors.UpstreamError | None = None

    def feed(self, data: bytes) -> list[AgentItem]:
        """Consume body bytes; return the items they complete (see ``ChunkParser``)."""
        if self.error is not None:
            raise self.error
        out: list[AgentItem] = []
        try:
            self._feed(data, out)
        except errors.UpstreamError as e:
            if not out:
                raise
            self.error = e
        return out

    def _feed(self, data: bytes, out: list[AgentItem]) -> None:
        raise NotImplementedError


class OllamaChatParser(_Parser):
    """Ollama ``/api/chat`` NDJSON: ``message.content`` deltas, stats on the ``done`` line."""

    def __init__(self) -> None:
        self._decoder = NDJSONDecoder(max_line_bytes=MAX_LINE)
        self.finished = False
        self._whole = True  # the decoder holds no partial line
        self._started = False  # the decoder has seen the stream's start (its BOM rule)

    def _feed(self, data: bytes, out: list[AgentItem]) -> None:
        if self._whole and not self.finished and data.endswith(b"\n"):
            # Whole lines: each plain delta without json.loads (_fast); the first
            # other line and the rest go the full way.
            lines = data.split(b"\n")
            for i in range(len(lines) - 1):
                line = lines[i]
                text = ollama_delta(line) if len(line) <= MAX_LINE else None
                if text is None:
                    return self._full(b"\n".join(lines[i:]), out)
                if not self._started:
                    self._started = True
                    self._decoder.feed(b"\n")  # past the start: a later BOM is an error
                if text:
                    out.append(text)
            return None
        return self._full(data, out)

    def _full(self, data: bytes, out: list[AgentItem]) -> None:
        if data:
            self._whole = data.endswith(b"\n")
            self._started = True
        try:
            objs = self._decoder.feed(data)
        except WireDecodeError as e:
            self._items(list(e.decoded or ()), out)  # the lines before the bad one
            raise errors.UpstreamError("upstream_error",
                                       f"ollama upstream sent a malformed line: {e}") from None
        self._items(objs, out)

    def close(self) -> list[AgentItem]:
        if self.error is not None:
            raise self.error
        if self.finished:
            return []
        items: list[AgentItem] = []
        try:
            self._items(self._decoder.flush(), items)
        except WireDecodeError:
            items = []
        if not self.finished:
            raise errors.dropped("ollama")
        return items

    def _items(self, objs: list[Any], out: list[AgentItem]) -> None:
        for obj in objs:
            if self.finished:
                break
            if not isinstance(obj, dict):
                raise errors.UpstreamError("upstream_error",
                                           "ollama upstream sent a line that is not an object")
            if "error" in obj:
                raise errors.in_band("ollama", obj)
            message = obj.get("message")
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str) and content:
                out.append(content)
            if obj.get("done"):
                self.finished = True
                out.append(Finish(_reason(obj.get("done_reason"))))
                if "prompt_eval_count" in obj or "eval_count" in obj:
                    out.append(Usage(_count(obj.get("prompt_eval_count")),
                                     _count(obj.get("eval_count"))))


class OpenAIChatParser(_Parser):
    """OpenAI chat-completion chunks over SSE, up to ``data: [DONE]``."""

    def __init__(self) -> None:
        self._decoder = SSEDecoder(max_line_bytes=MAX_LINE)
        self.finished = False

    def _feed(self, data: bytes, out: list[AgentItem]) -> None:
        try:
            messages = self._decoder.feed(data)
        except WireDecodeError as e:
            self._messages(list(e.decoded or ()), out)  # the events before the bad one
            raise errors.UpstreamError("upstream_error",
                                       f"openai upstream sent a malformed event: {e}") from None
        self._messages(messages, out)

    def _messages(self, messages: list[Any], out: list[AgentItem]) -> None:
        for message in messages:
            if self.finished:
                break
            if message.data.startswith("[DONE]"):
                self.finished = True
                break
            text = openai_delta(message.data)  # the common chunk without json.loads
            if text is not None:
                if text:
                    out.append(text)
                continue
            try:
                chunk = json.loads(message.data)
            except ValueError:
                raise errors.UpstreamError(
                    "upstream_error", "openai upstream sent an event that is not JSON") from None
            if not isinstance(chunk, dict):
                raise errors.UpstreamError("upstream_error",
                                           "openai upstream sent an event that is not an object")
            if "error" in chunk:
                raise errors.in_band("openai", chunk)
            for choice in chunk.get("choices") or ():
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta") or {}
                content = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(content, str) and content:
                    out.append(content)
                if choice.get("finish_reason"):
                    out.append(Finish(_reason(choice["finish_reason"])))
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                out.append(Usage(_count(usage.get("prompt_tokens")),
                                 _count(usage.get("completion_tokens"))))

    def close(self) -> list[AgentItem]:
        if self.error is not None:
            raise self.error
        if not self.finished:
            raise errors.dropped("openai", "no [DONE]")
        return []


def make_parser(provider: Provider) -> ChunkParser:
    """A fresh parser for one upstream response of ``provider``."""
    return OllamaChatParser() if provider == "ollama" else OpenAIChatParser()


def _reason(value: Any) -> str:
    return "length" if value == "length" else "stop"


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
