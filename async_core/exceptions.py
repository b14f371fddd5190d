"""Exceptions of the streaming engine: one tree.

Two kinds, kept apart because they end differently:

- ``ConfigError`` (a ``ValueError``): the configuration cannot work. Raised at
  start-up; the server prints one line naming the setting and exits non-zero. Never
  an HTTP response. ``AuthConfigError``, ``StoreConfigError`` and
  ``WebhookConfigError`` are its subclasses.
- ``StreamBridgeError``: every error a client can see. Each class carries its HTTP
  status (used before the first byte) and its stable in-band code (used after); an
  instance may carry its own (an agent's ``AgentFailure``, an upstream's error),
  given to the constructor, never assigned afterwards::

    StreamBridgeError                  500 internal_error
    ├── BadRequest                     400 bad_request
    │   ├── UnsupportedFormat          406 unsupported_format
    │   └── PayloadTooLarge            413 payload_too_large
    ├── Unauthorized                   401 unauthorized
    ├── NotFound                       404 not_found
    │   └── UnknownAgent               404 unknown_agent
    ├── RateLimited                    429 rate_limited        (Retry-After)
    ├── Overloaded                     503 overloaded          (Retry-After)
    │   └── ShuttingDown               503 shutting_down       (Retry-After)
    ├── NotStarted                     503 not_started
    └── StreamFailure                  in-band only, after the first byte
        ├── AgentError                 502 agent_error
        │   └── AgentFailure           502 agent_error   (an agent's own code, status)
        ├── FirstChunkTimeout          504 first_chunk_timeout
        ├── IdleTimeout                504 idle_timeout
        ├── TotalTimeout               504 total_timeout
        └── StreamShutdown             503 shutdown

Foreign exceptions (anyio, janus, httpx, ...) are translated where they are
caught; callers never see them.
"""

from __future__ import annotations

from typing import Any

from .wire import error_body


class ConfigError(ValueError):
    """A configuration that cannot work, found at start-up: one line, non-zero exit.

    Args:
        message: one line naming the setting and what is wrong with it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StreamBridgeError(Exception):
    """Base class of client-visible errors: an HTTP status and a stable code.

    The class says the usual status, code and retryability; an instance may state its
    own (``AgentFailure`` does, for an agent's or an upstream's failure).

    Args:
        message: a human-readable sentence naming the problem.
        retry_after: seconds the client should wait before retrying, if any.
        code: this error's in-band code, if not the class'.
        status: this error's HTTP status before the first byte, if not the class'.
        retryable: whether a retry may help, if not the class' answer.
    """

    status: int = 500
    code: str = "internal_error"
    retryable: bool = False

    def __init__(self, message: str, *, retry_after: float | None = None,
                 code: str | None = None, status: int | None = None,
                 retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if retryable is not None:
            self.retryable = retryable

    def body(self) -> dict[str, Any]:
        """Return the JSON body of the HTTP error: ``{"error": {"code", "message", "type"}}``."""
        return error_body(self.code, self.message)

    def headers(self) -> dict[str, str]:
        """Return the extra response headers (``Retry-After`` where it applies)."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, int(-(-self.retry_after // 1))))}


class BadRequest(StreamBridgeError):
    """The request body or its parameters are invalid."""

    status = 400
    code = "bad_request"


class UnsupportedFormat(BadRequest):
    """The ``Accept`` header or ``?format=`` asks for a format we do not speak."""

    status = 406
    code = "unsupported_format"


class PayloadTooLarge(BadRequest):
    """The request body exceeds the configured limit."""

    status = 413
    code = "payload_too_large"


class Unauthorized(StreamBridgeError):
    """Missing or wrong credentials."""

    status = 401
    code = "unauthorized"


class NotFound(StreamBridgeError):
    """The named resource does not exist (or is not visible to the caller)."""

    status = 404
    code = "not_found"


class UnknownAgent(NotFound):
    """No agent is registered under the requested name."""

    code = "unknown_agent"


class RateLimited(StreamBridgeError):
    """The request rate limit was exceeded."""

    status = 429
    code = "rate_limited"
    retryable = True


class Overloaded(StreamBridgeError):
    """No concurrency slot became free within the admission timeout."""

    status = 503
    code = "overloaded"
    retryable = True


class ShuttingDown(Overloaded):
    """The server is draining and admits no new streams."""

    code = "shutting_down"


class NotStarted(StreamBridgeError):
    """The engine's lifespan is not running in this app: nothing would be stored."""

    status = 503
    code = "not_started"


class StreamFailure(StreamBridgeError):
    """A failure of a running stream; reported in-band once bytes were sent."""


class AgentError(StreamFailure):
    """The agent raised (after retries, if it failed before its first output)."""

    status = 502
    code = "agent_error"


class AgentFailure(AgentError):  # noqa: N818 - the name says what it is to agent authors
    """Raised by an agent for a failure whose message may be shown to the client.

    Any other exception is reported to the client as a generic ``agent_error``
    (its details go to the server log only). Exported as ``async_core.AgentFailure``.

    Args:
        message: a sentence safe to show to the client.
        retryable: whether retrying the request may help (the engine retries only
            these, and only before anything reached the client).
        code: the error code the client sees (``agent_error`` unless given).
        status: the status of the HTTP error sent when the failure happens before the
            first byte (afterwards it is an in-band ``error`` event); 502 unless given.
        retry_after: seconds to wait before a retry (the engine's, and the client's
            ``Retry-After``), if the failure says.
    """

    def __init__(self, message: str, *, retryable: bool = False, code: str | None = None,
                 status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after, code=code, status=status,
                         retryable=retryable)

    @property
    def http_status(self) -> int:
        """The HTTP status before the first byte (the same as ``status``)."""
        return self.status


class FirstChunkTimeout(StreamFailure):
    """The agent produced no output within the first-chunk timeout."""

    status = 504
    code = "first_chunk_timeout"
    retryable = True


class IdleTimeout(StreamFailure):
    """The gap between two agent outputs exceeded the idle timeout."""

    status = 504
    code = "idle_timeout"
    retryable = True


class TotalTimeout(StreamFailure):
    """The stream ran longer than the total timeout."""

    status = 504
    code = "total_timeout"


class StreamShutdown(StreamFailure):
    """The server shut down; the drain grace period ran out before the stream ended."""

    status = 503
    code = "shutdown"
    retryable = True
