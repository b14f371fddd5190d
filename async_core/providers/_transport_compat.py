"""What the async twin's transport needs from the libraries under it, checked and translated.

Two seams of ``_transport`` and ``_http11``: httpcore's exceptions raised as httpx's
(httpx's own map is private), and a stream transport recognised by its methods rather than its class
(uvloop's transports subclass no asyncio transport class: issue 16).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import httpcore
import httpx

# httpcore's exceptions as httpx raises them (httpx's own map is private).
_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)
# What this module calls on a transport. uvloop's transports (what uvicorn picks when
# uvloop is importable) implement them all but subclass neither asyncio.Transport nor
# asyncio.BaseTransport, so an isinstance check fails every upstream stream (issue 16).
_TRANSPORT_METHODS = ("write", "close", "is_closing", "get_extra_info", "pause_reading",
                      "resume_reading")


def stream_transport(transport: object) -> asyncio.Transport:
    """Return ``transport`` typed as a stream transport: checked by its methods, not its class.

    Raises:
        TypeError: it lacks a method a stream transport has (a datagram transport, say).
    """
    missing = [m for m in _TRANSPORT_METHODS if not callable(getattr(transport, m, None))]
    if missing:
        raise TypeError(f"not a stream transport ({type(transport).__name__} lacks "
                        f"{', '.join(missing)})")
    return transport  # type: ignore[return-value]  # structurally an asyncio.Transport


def mapped_error(error: Exception) -> Exception:
    """``error`` as the httpx exception callers expect (itself if not httpcore's)."""
    if isinstance(error, httpx.HTTPError):
        return error
    for theirs, ours in _EXCEPTIONS:
        if isinstance(error, theirs):
            return ours(str(error))
    return error


@contextlib.contextmanager
def mapped_errors() -> Iterator[None]:
    """Raise httpcore's exceptions as the httpx ones callers expect."""
    try:
        yield
    except Exception as e:
        mapped = mapped_error(e)
        if mapped is e:
            raise
        raise mapped from e
