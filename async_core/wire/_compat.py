"""Formats of real clients: OpenAI ``chat.completion.chunk`` SSE and Ollama NDJSON.

Both were checked against the official clients (research/mission_anchors.md §2.12):

- OpenAI frames carry only ``data:`` lines. Never ``id:``, ``event:`` or
  ``retry:``: openai-python keeps the last event id and, once one was seen,
  dispatches every blank line (our ``: ping\\n\\n`` included) as an empty event,
  then crashes on ``json.loads("")`` (openai-python#2722, #3833). Errors after
  the headers are ``data: {"error": {...}}`` and the stream always ends with
  ``data: [DONE]``.
- Ollama lines are parsed by ``json.loads`` one by one and chat chunks must
  have ``message``: a keepalive is a complete empty chunk, never a blank line or
  ``{}``. Errors are ``{"error": "<message>"}``. Lines are ASCII-only
  (``encode_ndjson``), because httpx ``iter_lines`` splits on U+2028 & co.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from ._events import Delta, Done, Error, Event
from ._json import dumps_compact
from ._ndjson import encode_ndjson
from ._sse import encode_sse
from ._types import MEDIA_TYPES, StreamMeta

__all__ = [
    "OllamaEncoder",
    "OpenAIEncoder",
    "compat_finish_reason",
    "ollama_stats",
    "openai_error_type",
    "openai_usage",
    "rfc3339",
]

_PING_SSE = encode_sse(comment="ping")
_DONE_SSE = encode_sse(data="[DONE]")


def compat_finish_reason(event: Done) -> Literal["stop", "length"]:
    """Map our finish reason onto the two both APIs know (anything but length is stop)."""
    return "length" if event.finish_reason == "length" else "stop"


def openai_error_type(code: str) -> str:
    """Return the OpenAI error ``type`` for one of our codes (``*_timeout`` is ``timeout``)."""
    return "timeout" if code.endswith("_timeout") else "server_error"


def openai_usage(event: Done) -> dict[str, int]:
    """Return OpenAI usage: ``Done.usage`` when known, else prompt 0 and completion = tokens."""
    usage = event.usage or {}
    prompt = int(usage.get("prompt_tokens", 0))
    completion = int(usage.get("completion_tokens", event.tokens))
    total = int(usage.get("total_tokens", prompt + completion))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def rfc3339(timestamp: float) -> str:
    """Format unix seconds as RFC 3339 UTC with microseconds: ``2024-01-02T03:04:05.000006Z``."""
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ollama_stats(event: Done) -> dict[str, Any]:
    """Return the fields of Ollama's final chunk after ``done`` (durations in nanoseconds).

    ``eval_duration`` is the time after the first chunk (the whole stream when
    no chunk came); load and prompt-eval durations are unknown to us and 0.
    """
    usage = event.usage or {}
    total_ns = max(0, round(event.duration_ms * 1_000_000))
    eval_ms = event.duration_ms - (event.ttfc_ms or 0.0)
    return {
        "done_reason": compat_finish_reason(event),
        "total_duration": total_ns,
        "load_duration": 0,
        "prompt_eval_count": int(usage.get("prompt_tokens", 0)),
        "prompt_eval_duration": 0,
        "eval_count": event.tokens,
        "eval_duration": max(0, round(eval_ms * 1_000_000)),
    }


_CONTENT_START = b',"choices":[{"index":0,"delta":{"content":'
_CONTENT_END = b'},"finish_reason":null}]}\n\n'


class OpenAIEncoder:
    """OpenAI ``chat.completion.chunk`` frames: ``data:`` lines only, ended by ``[DONE]``."""

    media_type = MEDIA_TYPES["openai"]

    def __init__(self, meta: StreamMeta) -> None:
        """Create the encoder of one stream.

        Args:
            meta: the stream's identity; ``include_usage`` adds a usage chunk.
        """
        self._meta = meta
        self._role_sent = False
        head = dumps_compact({"id": f"chatcmpl-{meta.stream_id}", "object": "chat.completion.chunk",
                              "created": int(meta.created), "model": meta.model})
        self._content_prefix = b"data: " + head[:-1].encode() + _CONTENT_START

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body: dict[str, Any] = {
            "id": f"chatcmpl-{self._meta.stream_id}",
            "object": "chat.completion.chunk",
            "created": int(self._meta.created),
            "model": self._meta.model,
            "choices": choices,
            **extra,
        }
        return encode_sse(data=dumps_compact(body))

    def _delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return self._chunk([{"index": 0, "delta": delta, "finish_reason": finish_reason}])

    def encode(self, event: Event, event_id: str | None = None) -> bytes:
        """Frame one event.

        A delta becomes a chunk with ``content`` (and ``role`` on the first one);
        a state becomes ``b""``; done becomes the ``finish_reason`` chunk, the
        usage chunk when asked for, and ``data: [DONE]``; error becomes
        ``data: {"error": {...}}`` and ``data: [DONE]``.
        """
        if isinstance(event, Delta):
            if self._role_sent:  # the hot path: a prefix built once, the same bytes
                return self._content_prefix + dumps_compact(event.text).encode() + _CONTENT_END
            delta: dict[str, Any] = {"content": event.text}
            if not self._role_sent:
                self._role_sent = True
                delta = {"role": "assistant", **delta}
            return self._delta(delta)
        if isinstance(event, Done):
            out = b""
            if not self._role_sent:
                # An empty reply still announces the assistant role, as OpenAI does.
                out += self.encode(Delta(seq=event.seq, text="", tokens=0))
            out += self._delta({}, compat_finish_reason(event))
            if self._meta.include_usage:
                out += self._chunk([], usage=openai_usage(event))
            return out + _DONE_SSE
        if isinstance(event, Error):
            error = {
                "message": event.message,
                "type": openai_error_type(event.code),
                "code": event.code,
            }
            return encode_sse(data=dumps_compact({"error": error})) + _DONE_SSE
        return b""

    def heartbeat(self) -> bytes:
        """Return ``b": ping\\n\\n"`` (safe only because no frame carries ``id:``)."""
        return _PING_SSE


class OllamaEncoder:
    """Ollama ``/api/chat`` or ``/api/generate`` NDJSON chunks."""

    media_type = MEDIA_TYPES["ollama-chat"]

    def __init__(self, meta: StreamMeta, *, chat: bool) -> None:
        """Create the encoder of one stream.

        Args:
            meta: the stream's identity and clock (for ``created_at``).
            chat: ``True`` for ``/api/chat`` (``message``), ``False`` for
                ``/api/generate`` (``response``).
        """
        self._meta = meta
        self._chat = chat

    def chunk(self, text: str, *, done: bool) -> dict[str, Any]:
        """Return a chunk object carrying ``text``, stamped now by ``meta.clock``."""
        body: dict[str, Any] = {
            "model": self._meta.model,
            "created_at": rfc3339(self._meta.clock()),
        }
        if self._chat:
            body["message"] = {"role": "assistant", "content": text}
        else:
            body["response"] = text
        body["done"] = done
        return body

    def encode(self, event: Event, event_id: str | None = None) -> bytes:
        """Frame one event: a chunk per delta, the stats chunk on done, ``{"error"}`` on error."""
        if isinstance(event, Delta):
            return encode_ndjson(self.chunk(event.text, done=False))
        if isinstance(event, Done):
            return encode_ndjson({**self.chunk("", done=True), **ollama_stats(event)})
        if isinstance(event, Error):
            return encode_ndjson({"error": event.message})
        return b""

    def heartbeat(self) -> bytes:
        """Return a complete empty chunk (``""`` text, ``done: false``), never a blank line."""
        return encode_ndjson(self.chunk("", done=False))
