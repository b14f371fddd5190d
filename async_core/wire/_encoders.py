"""The encoder registry, buffered (``stream: false``) bodies and HTTP error bodies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._compat import (
    OllamaEncoder,
    OpenAIEncoder,
    compat_finish_reason,
    ollama_stats,
    openai_usage,
    rfc3339,
)
from ._events import Delta, Done, Event, State
from ._native import NativeNDJSONEncoder, NativeSSEEncoder, TextEncoder
from ._types import Encoder, Format, StreamMeta

__all__ = ["buffered_body", "error_body", "make_encoder"]


def make_encoder(fmt: Format, meta: StreamMeta) -> Encoder:
    """Return a fresh encoder for one stream.

    Args:
        fmt: the wire format.
        meta: the stream's identity (unused by the native formats).

    Returns:
        A stateful encoder; use one per stream.

    Raises:
        ValueError: for an unknown format.
    """
    if fmt == "sse":
        return NativeSSEEncoder()
    if fmt == "ndjson":
        return NativeNDJSONEncoder()
    if fmt == "text":
        return TextEncoder()
    if fmt == "openai":
        return OpenAIEncoder(meta)
    if fmt == "ollama-chat":
        return OllamaEncoder(meta, chat=True)
    if fmt == "ollama-generate":
        return OllamaEncoder(meta, chat=False)
    raise ValueError(f"unknown wire format: {fmt!r}")


def buffered_body(fmt: Format, meta: StreamMeta, events: Sequence[Event]) -> dict[str, Any]:
    """Return the JSON body of a non-streamed response (``stream: false``).

    Args:
        fmt: the wire format asked for; ``sse``, ``ndjson`` and ``text`` all
            give the native body.
        meta: the stream's identity.
        events: the whole stream, ending in ``Done``.

    Returns:
        Native: ``{"stream_id", "conversation_id", "model", "text",
        "finish_reason", "tokens", "ttfc_ms", "duration_ms", "states"}`` plus
        ``"usage"`` when known. OpenAI: a ``chat.completion`` object. Ollama:
        the final chunk with the whole ``message``/``response`` and the stats.

    Raises:
        ValueError: if ``events`` does not end in ``Done`` (a failed stream
            gets ``error_body`` and an HTTP error status instead).
    """
    if not events or not isinstance(events[-1], Done):
        raise ValueError("buffered_body needs a stream that ends in Done")
    done = events[-1]
    text = "".join(e.text for e in events if isinstance(e, Delta))
    if fmt == "openai":
        return {
            "id": f"chatcmpl-{meta.stream_id}",
            "object": "chat.completion",
            "created": int(meta.created),
            "model": meta.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": compat_finish_reason(done),
                }
            ],
            "usage": openai_usage(done),
        }
    if fmt in ("ollama-chat", "ollama-generate"):
        body: dict[str, Any] = {"model": meta.model, "created_at": rfc3339(meta.clock())}
        if fmt == "ollama-chat":
            body["message"] = {"role": "assistant", "content": text}
        else:
            body["response"] = text
        body["done"] = True
        return {**body, **ollama_stats(done)}
    native: dict[str, Any] = {
        "stream_id": meta.stream_id,
        "conversation_id": done.conversation_id,
        "model": meta.model,
        "text": text,
        "finish_reason": done.finish_reason,
        "tokens": done.tokens,
        "ttfc_ms": done.ttfc_ms,
        "duration_ms": done.duration_ms,
        "states": [dict(e.data) for e in events if isinstance(e, State)],
    }
    if done.usage is not None:
        native["usage"] = dict(done.usage)
    return native


def error_body(code: str, message: str, *, fmt: Format | None = None,
               typed: bool = True) -> dict[str, Any]:
    """Return the JSON body of an HTTP error sent before the first byte of a response.

    The one builder of that body: the exceptions tree, both apps' own 404/405/500
    and the read timeout's 408 all use it.

    Args:
        code: our stable error code (``rate_limited``, ``unknown_agent``, ...).
        message: a human-readable sentence.
        fmt: the route's format. Ollama routes get ``{"error": message}``,
            because ``ollama.ResponseError`` takes ``error`` as the message
            string; every other route gets the nested object.
        typed: add ``type`` (the code again, which OpenAI clients read as the
            error's type); the 408 the server protocol writes has none.

    Returns:
        ``{"error": {"code", "message", "type"}}``, or ``{"error": message}`` for
        Ollama routes.
    """
    if fmt in ("ollama-chat", "ollama-generate"):
        return {"error": message}
    return {"error": {"code": code, "message": message, **({"type": code} if typed else {})}}
