"""uvicorn's HTTP/1.1 protocol with a bound on the time a client takes to send a request.

uvicorn bounds the idle time between requests (``timeout_keep_alive``) but not the
time to send one: a client that trickles its headers or its body one byte at a time
holds its connection, its parser and (for the body) its ASGI task forever (slowloris,
issue 10). :class:`ReadTimeoutProtocol` is uvicorn's own httptools protocol, passed
to uvicorn as its ``http`` class (no patching), plus one timer per connection:

- armed when the connection is made and when a request's first byte arrives;
- cancelled when the request's last body byte has arrived, or when the connection
  upgrades to a WebSocket or closes;
- when it fires, the client gets ``408 Request Timeout`` (if no response has started)
  and the connection is closed; the app, if it was reading the body, sees
  ``http.disconnect``.

A streaming response is not limited: the request is complete before it starts.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .wire import error_body

log = logging.getLogger("streambridge.server")

_RESPONSE_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s")
# Spaced JSON and no ``type``: this body has always been written so.
_BODY_408 = json.dumps(error_body("request_timeout", "the request was not received in time",
                                  typed=False)).encode()


class ReadTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol that closes a connection slow to send its request.

    Args:
        *args: uvicorn's protocol arguments.
        read_timeout: seconds a client has to send a request's headers and body
            (``0``: unbounded, uvicorn's own behaviour).
        **kwargs: uvicorn's protocol keyword arguments.
    """

    def __init__(self, *args: Any, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timeout = read_timeout
        self._read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._read_timer is None:
            self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the WebSocket protocol owns the connection from here
        super().handle_websocket_upgrade()

    def _arm(self) -> None:
        if self._read_timeout > 0:
            self._read_timer = self.loop.call_later(self._read_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        log.info("closed a connection from %s that took more than %g s to send its request",
                 self.client, self._read_timeout)
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(_RESPONSE_408 % (len(_BODY_408), _BODY_408))
        self.transport.close()


def read_timeout_protocol(read_timeout: float) -> Any:
    """Return the ``http`` argument for uvicorn (``uvicorn.run``, ``Config``).

    A ``functools.partial`` of a module-level class, so it pickles by reference
    (uvicorn's worker processes are spawned with the config).

    Args:
        read_timeout: seconds a client has to send a request's headers and body.
    """
    return functools.partial(ReadTimeoutProtocol, read_timeout=read_timeout)
