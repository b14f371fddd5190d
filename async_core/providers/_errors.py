"""Upstream failures as clear errors for our client, sans-IO.

Both providers' error shapes are read here: Ollama's ``{"error": "text"}`` and
OpenAI's ``{"error": {"message", "type", "code"}}``, as an HTTP error body or
in-band in the stream. Each becomes an :class:`UpstreamError`, whose ``code`` is
the in-band error code our client sees::

    AgentFailure            (HTTP status before the first byte: see _HTTP_STATUS)
    └── UpstreamError                    code                    retryable
        ├── status 401 / 403             upstream_unauthorized   no
        ├── status 404                   upstream_not_found      no
        ├── status 429                   upstream_rate_limited   yes (Retry-After)
        ├── status 5xx                   upstream_unavailable    yes
        ├── other 4xx                    upstream_bad_request    no
        ├── connect error / timeout      upstream_unreachable    yes
        ├── no first chunk / idle gap    upstream_timeout        yes before output
        ├── connection dropped           upstream_disconnected   yes before output
        └── in-band error, bad framing   upstream_error          no
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

from ..agents import AgentFailure

MAX_ERROR_BODY = 65_536  # bytes of an error body worth reading
_MAX_MESSAGE = 300


class UpstreamError(AgentFailure):
    """The upstream LLM server failed; the message is safe to show to our client.

    The engine reads ``code`` (the in-band error code) and ``retry_after`` (the least
    wait before the engine's retry), besides ``retryable``.

    Args:
        code: a stable ``upstream_*`` code.
        message: a sentence naming the provider and the problem.
        retryable: whether another attempt may succeed.
        status: the upstream's HTTP status, if it sent one (kept as ``upstream_status``;
            ``status`` is what our client gets before the first byte).
        retry_after: seconds the upstream asked us to wait.
    """

    def __init__(self, code: str, message: str, *, retryable: bool = False,
                 status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, retryable=retryable, code=code,
                         status=_HTTP_STATUS.get(code, 502), retry_after=retry_after)
        self.upstream_status = status


# What our client gets when the failure comes before the first byte: a rate limit
# stays a 429 (with Retry-After), a missing model a 404, a silent upstream a 504;
# anything else is the upstream's fault, not the client's: 502 Bad Gateway.
_HTTP_STATUS = {"upstream_rate_limited": 429, "upstream_not_found": 404,
                "upstream_timeout": 504, "upstream_unavailable": 503}


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_message(body: bytes | str | Any) -> str | None:
    """The human message of either provider's error shape, or None if there is none."""
    data = body
    if isinstance(body, (bytes, str)):
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            return text.strip()[:_MAX_MESSAGE] or None
    if isinstance(data, dict) and "error" in data:
        err = data["error"]
        if isinstance(err, dict):  # OpenAI: {"error": {"message", "type", "code"}}
            msg = err.get("message") or err.get("code") or err.get("type")
            return str(msg)[:_MAX_MESSAGE] if msg else "unknown error"
        return str(err)[:_MAX_MESSAGE]  # Ollama: {"error": "text"}
    return None


def from_status(provider: str, status: int, body: bytes, retry_after: str | None,
                *, max_retry_after: float) -> UpstreamError:
    """The error for an upstream HTTP error response.

    Args:
        provider: ``ollama`` or ``openai`` (named in the message).
        status: the upstream's status code (>= 400).
        body: the start of its body.
        retry_after: its ``Retry-After`` header, if any.
        max_retry_after: longer waits than this are not retried.
    """
    detail = error_message(body) or f"HTTP {status}"
    wait = parse_retry_after(retry_after)
    where = f"{provider} upstream"
    if status in (401, 403):
        return UpstreamError("upstream_unauthorized",
                             f"{where} refused our credentials ({status}): {detail}",
                             status=status)
    if status == 404:
        return UpstreamError("upstream_not_found", f"{where} answered 404: {detail}",
                             status=status)
    if status == 429 or status >= 500:
        code = "upstream_rate_limited" if status == 429 else "upstream_unavailable"
        retryable = wait is None or wait <= max_retry_after
        return UpstreamError(code, f"{where} answered {status}: {detail}",
                             retryable=retryable, status=status, retry_after=wait)
    return UpstreamError("upstream_bad_request", f"{where} answered {status}: {detail}",
                         status=status)


def in_band(provider: str, payload: Any) -> UpstreamError:
    """The error for an error object the upstream sent inside its stream."""
    return UpstreamError("upstream_error",
                         f"{provider} upstream failed mid-stream: {error_message(payload)}")


def unreachable(provider: str, reason: str) -> UpstreamError:
    """The error for a connection that could not be opened (retryable)."""
    return UpstreamError("upstream_unreachable", f"{provider} upstream unreachable: {reason}",
                         retryable=True)


def timed_out(provider: str, first: bool, seconds: float) -> UpstreamError:
    """The error for an upstream that went silent (before or after its first chunk)."""
    what = "sent no response" if first else "went silent"
    return UpstreamError("upstream_timeout", f"{provider} upstream {what} for {seconds:g} s",
                         retryable=True)


def dropped(provider: str, reason: str = "") -> UpstreamError:
    """The error for a connection the upstream closed before its terminal chunk."""
    tail = f" ({reason})" if reason else ""
    return UpstreamError("upstream_disconnected",
                         f"{provider} upstream closed the stream before it ended{tail}",
                         retryable=True)
