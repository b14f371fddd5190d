"""The HTTP contract's request side, sans-IO: bytes and headers in, a ``ChatCall`` out.

Both paths (Starlette and Flask) parse requests here, so they accept and refuse
exactly the same inputs with exactly the same errors. Stdlib only.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._body_json import load_body
from .exceptions import BadRequest, PayloadTooLarge, UnsupportedFormat
from .wire import Format

__all__ = ["ROLES", "ROUTES", "SAMPLING_KEYS", "ChatCall", "Route", "check_body_size",
           "drain_limit", "load_body", "negotiate", "new_id", "parse_chat", "parse_resume"]

Route = Literal["native", "openai", "ollama-chat", "ollama-generate"]
ROUTES: dict[str, Route] = {
    "/v1/chat": "native",
    "/v1/chat/completions": "openai",
    "/api/chat": "ollama-chat",
    "/api/generate": "ollama-generate",
}
ROLES = frozenset({"system", "user", "assistant", "tool"})
# Used with fullmatch: "$" also matches before a final newline, so "abc\n" passed (issue 10).
_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_NATIVE_FORMATS: dict[str, Format] = {
    "text/event-stream": "sse", "application/x-ndjson": "ndjson",
    "application/jsonl": "ndjson", "text/plain": "text",
}
# Sampling parameters that clients send by habit; agents that do not use them ignore them.
SAMPLING_KEYS = frozenset({"temperature", "top_p", "top_k", "seed", "num_predict", "max_tokens",
                           "stop", "presence_penalty", "frequency_penalty", "num_ctx"})


@dataclass(frozen=True, slots=True)
class ChatCall:
    """One parsed chat request, whatever route it came in on.

    Attributes:
        route: which API shape the request used.
        agent: the agent name (``agent`` field, or ``model`` on compatible routes).
        messages: the conversation turns sent with this request.
        options: agent options from the body's ``options`` object.
        conversation_id: given by the client, or newly created.
        stream: False asks for one buffered JSON body.
        format: the wire format of the response.
        include_usage: OpenAI ``stream_options.include_usage``.
        new_conversation: the server made the id up (the request named none), so the
            conversation has no history and no owner yet.
        on_disconnect: ``cancel`` or ``continue`` (native ``on_disconnect``); empty:
            the server's ``STREAMBRIDGE_ON_DISCONNECT``.
        background: native ``"background": true``: answer ``202`` and run with no reader.
    """

    route: Route
    agent: str
    messages: tuple[Mapping[str, str], ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    conversation_id: str = ""
    stream: bool = True
    format: Format = "sse"
    include_usage: bool = False
    new_conversation: bool = False
    on_disconnect: str = ""
    background: bool = False


def new_id() -> str:
    """Return a new random id (stream and conversation ids)."""
    return uuid.uuid4().hex


def check_body_size(length: int | None, limit: int) -> None:
    """Refuse a body (by declared or actual length) over ``limit`` bytes with 413."""
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit}")


def drain_limit(max_body: int) -> int:
    """Bytes of an oversized body read (and dropped) before its 413 is sent.

    Reading them lets the 413 reach the client instead of a connection reset; past
    this bound the server answers and closes anyway.
    """
    return max(4 * max_body, 8 << 20)


def parse_chat(route: Route, body: bytes, *, headers: Mapping[str, str],
               query: Mapping[str, str], default_agent: str, max_body: int,
               max_messages: int) -> ChatCall:
    """Parse and validate a chat request.

    Args:
        route: the API shape, from ``ROUTES``.
        body: the raw request body.
        headers: request headers with lower-case names.
        query: query-string parameters.
        default_agent: agent used when the native route names none.
        max_body: largest accepted body in bytes.
        max_messages: most messages accepted.

    Raises:
        BadRequest: and its subclasses, each naming the problem.
    """
    check_body_size(len(body), max_body)
    # Like Ollama's server, the body is read as JSON whatever the Content-Type says
    # (curl -d sends application/x-www-form-urlencoded); a non-JSON body is a 400, and
    # so is JSON we cannot hold (NaN, lone surrogates, deep nesting: _body_json).
    data = load_body(body)
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequest("options must be an object")
    conversation_id, made_up = _conversation_id(data, headers)
    call = _parse(route, data, headers, query, options, conversation_id, default_agent,
                  max_messages)
    return dataclasses.replace(call, new_conversation=True) if made_up else call


def _parse(route: Route, data: dict[str, Any], headers: Mapping[str, str],
           query: Mapping[str, str], options: dict[str, Any], conversation_id: str,
           default_agent: str, max_messages: int) -> ChatCall:
    if route == "native":
        return _native(data, headers, query, options, conversation_id, default_agent,
                       max_messages)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model must be a non-empty string naming the agent")
    stream = _bool(data, "stream", default=route != "openai")
    if route == "ollama-generate":
        prompt = data.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise BadRequest("prompt must be a non-empty string")
        messages: list[dict[str, str]] = []
        system = data.get("system")
        if system is not None:
            if not isinstance(system, str):
                raise BadRequest("system must be a string")
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": prompt})
        return ChatCall(route, model, tuple(messages), options, conversation_id, stream,
                        "ollama-generate")
    msgs = _messages(data.get("messages"), max_messages)
    include_usage = False
    if route == "openai":
        so = data.get("stream_options") or {}
        if not isinstance(so, dict):
            raise BadRequest("stream_options must be an object")
        include_usage = _bool(so, "include_usage", default=False, where="stream_options.")
    fmt: Format = "openai" if route == "openai" else "ollama-chat"
    return ChatCall(route, model, msgs, options, conversation_id, stream, fmt, include_usage)


def _native(data: dict[str, Any], headers: Mapping[str, str], query: Mapping[str, str],
            options: dict[str, Any], conversation_id: str, default_agent: str,
            max_messages: int) -> ChatCall:
    if "messages" in data and "message" in data:
        raise BadRequest("send either messages or message, not both")
    if "message" in data:
        message = data["message"]
        if not isinstance(message, str) or not message:
            raise BadRequest("message must be a non-empty string")
        msgs: tuple[Mapping[str, str], ...] = ({"role": "user", "content": message},)
    else:
        msgs = _messages(data.get("messages"), max_messages)
    agent = data.get("agent", default_agent)
    if not isinstance(agent, str) or not agent:
        raise BadRequest("agent must be a non-empty string")
    stream = _bool(data, "stream", default=True)
    fmt = negotiate(query.get("format"), headers.get("accept"), stream)
    on_disconnect = data.get("on_disconnect") or ""
    if on_disconnect not in ("", "cancel", "continue"):
        raise BadRequest("on_disconnect must be cancel or continue")
    return ChatCall("native", agent, msgs, options, conversation_id, stream, fmt,
                    on_disconnect=on_disconnect,
                    background=_bool(data, "background", default=False))


def parse_resume(headers: Mapping[str, str], query: Mapping[str, str]) -> tuple[str | None, Format]:
    """The cursor and wire format of ``GET /v1/streams/{id}``.

    ``Last-Event-ID`` (what a reconnecting ``EventSource`` sends) wins over
    ``?cursor=`` (which a reconnect repeats, stale, from its first URL).

    Args:
        headers: request headers with lower-case names.
        query: query-string parameters.

    Returns:
        The cursor text (None: from the beginning) and ``sse``, ``ndjson`` or ``text``.

    Raises:
        UnsupportedFormat: nothing we can send is acceptable (406).
    """
    cursor = headers.get("last-event-id")
    if cursor is None:
        cursor = query.get("cursor")
    return cursor, negotiate(query.get("format"), headers.get("accept"), True)


def negotiate(format_param: str | None, accept: str | None, stream: bool) -> Format:
    """Pick the native wire format from ``?format=`` or ``Accept`` (SSE by default).

    Raises:
        UnsupportedFormat: nothing we can send is acceptable (406).
    """
    if format_param:
        names: dict[str, Format] = {"sse": "sse", "ndjson": "ndjson", "text": "text"}
        if format_param not in names:
            raise UnsupportedFormat(f"format must be one of sse, ndjson, text; "
                                    f"got {format_param!r}")
        return names[format_param]
    if not accept:
        return "sse"
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in _NATIVE_FORMATS:
            return _NATIVE_FORMATS[media]
        if media in ("*/*", "text/*", ""):
            return "sse"
        if media == "application/json" and not stream:
            return "sse"
    raise UnsupportedFormat(f"cannot produce any of Accept: {accept!r}; use "
                            "text/event-stream, application/x-ndjson or text/plain")


def _messages(raw: Any, max_messages: int) -> tuple[Mapping[str, str], ...]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest("messages must be a non-empty array")
    if len(raw) > max_messages:
        raise BadRequest(f"too many messages ({len(raw)} > {max_messages})")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}] must be an object")
        role, content = m.get("role"), m.get("content", "")
        if not isinstance(role, str) or role not in ROLES:  # a list or dict is unhashable
            raise BadRequest(f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string")
        out.append({"role": role, "content": content})
    return tuple(out)


def _bool(data: dict[str, Any], key: str, *, default: bool, where: str = "") -> bool:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"{where}{key} must be a boolean")
    return value


def _conversation_id(data: dict[str, Any], headers: Mapping[str, str]) -> tuple[str, bool]:
    """The conversation id, and whether it was made up here (the request named none)."""
    body_id, header_id = data.get("conversation_id"), headers.get("x-conversation-id")
    if body_id is not None and not isinstance(body_id, str):
        raise BadRequest("conversation_id must be a string")
    if body_id and header_id and body_id != header_id:
        raise BadRequest("conversation_id and X-Conversation-Id disagree")
    cid = body_id or header_id
    if not cid:
        return new_id(), True
    if not _ID.fullmatch(cid):
        raise BadRequest("conversation_id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return cid, False
