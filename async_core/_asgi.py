"""The ASGI transport: sse-starlette's ``EventSourceResponse`` driving a session.

One transport for every streaming format: sse-starlette gives us the
disconnect listener (``receive()`` → ``http.disconnect``; uvicorn ignores writes
after a disconnect, uvicorn#2276) and the per-write send timeout. Our engine,
not sse-starlette, produces heartbeats (``ping=0``), so both paths emit the
same bytes, and drains on shutdown (sse-starlette's automatic drain, which
relies on its import-time patch of uvicorn's ``Server.handle_exit``, is turned
off below; see ``_lifecycle``).
"""

from __future__ import annotations

import asyncio
import logging

from sse_starlette.sse import AppStatus, EventSourceResponse, SendTimeoutError
from starlette.types import Message, Receive, Scope, Send

from ._engine import Outcome, StreamSession

log = logging.getLogger("streambridge.asgi")

# Our lifecycle ends streams with a terminal event on SIGTERM; sse-starlette's
# own watcher would cut them without one.
AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]


class SessionResponse(EventSourceResponse):
    """Streams ``session.frames()`` and reports why the stream stopped.

    Args:
        session: the admitted session to stream.
        headers: the contract's response headers.
    """

    def __init__(self, session: StreamSession, headers: dict[str, str]) -> None:
        self.session = session
        send_timeout = session.policy.send_timeout or None
        super().__init__(session.frames(), headers=headers,
                         media_type=session.encoder.media_type, ping=0,
                         send_timeout=send_timeout,
                         client_close_handler_callable=self._on_disconnect)

    async def _on_disconnect(self, message: Message) -> None:
        self.session.abort(Outcome.CLIENT_DISCONNECTED)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reason = Outcome.CLIENT_DISCONNECTED
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            reason = Outcome.SEND_TIMEOUT
            log.info("stream %s: client stopped reading (send timeout)",
                     self.session.info.stream_id)
        except asyncio.CancelledError:
            reason = Outcome.SHUTDOWN
            raise
        except OSError:
            reason = Outcome.CLIENT_DISCONNECTED
        finally:
            await self.session.finish(reason)
