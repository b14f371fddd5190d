"""``GET /v1/ws``: the contract's streams over one WebSocket, several at a time.

A socket is one more reader of the stream log: ``start`` opens a stream as
``POST /v1/chat`` does (``StreamService.open``), ``resume`` subscribes to one from a
cursor as ``GET /v1/streams/{id}`` does (``StreamService.subscribe``), ``cancel``
is ``POST /v1/streams/{id}/cancel``. Each stream is pumped by a task of its own
to the socket (at once when nothing waits, else into its bounded send queue) as JSON
text frames
``{"stream_id", "id", "event", "data"}``; ``id`` is the same log id as SSE's
``id:``, so a client can resume on SSE what it followed here, and the reverse.

When the socket ends, each stream is finished the way an HTTP response ends it
(``abort`` then ``finish(CLIENT_DISCONNECTED)``): a plain stream is cancelled, a
detached one (``on_disconnect=continue``, background, a reconnect grace) goes on,
by the engine's own policy. A client that does not read: a pump whose send blocks
holds its stream back (the engine pauses the agent, as for SSE); once a send has
waited ``STREAMBRIDGE_SEND_TIMEOUT``, or ``SEND_QUEUE`` messages or
``SEND_QUEUE_BYTES`` of text wait behind it, the socket is closed with 1013 (try again
later) and its streams end as for a client that left.

Heartbeats: a socket on which nothing was sent for ``STREAMBRIDGE_HEARTBEAT`` seconds
gets a ``ping`` message (``stream_id`` and ``id`` null) that a browser's ``onmessage``
sees; protocol pings at the same interval are uvicorn's (``ws_ping_interval``, set by
the servers), and a pong that does not come within ``ws_ping_timeout`` closes 1011.

The protocol itself (messages, errors, close codes, the send queue's bounds) is the
sans-IO ``ws_protocol``. ``WebSocketSession`` needs only a ``WebSocketTransport``:
Starlette's ``WebSocket`` here, and on the legacy path the loop-side end of a
gunicorn socket (``legacy_bridge``), so both paths run this same session on their
engine's loop. This module imports Starlette only inside ``websocket_endpoint``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from . import ws_protocol as wsp
from ._records import Outcome, Streamable
from .auth import Principal
from .exceptions import BadRequest, StreamBridgeError
from .service import StreamService
from .ws_protocol import CLOSE_POLICY, CLOSE_SLOW, CLOSE_WAIT, SEND_QUEUE, WS_PATH
from .ws_protocol import relay_frame as _relay  # tests/async_core/test_ws_relay.py

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

log = logging.getLogger("streambridge.ws")


class WebSocketTransport(Protocol):
    """What a ``WebSocketSession`` needs of its socket: Starlette's ``WebSocket`` has it,
    and so has the legacy path's loop-side end of a gunicorn socket (``legacy_bridge``)."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def accept(self) -> None: ...

    async def receive(self) -> Mapping[str, Any]: ...

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


def websocket_endpoint(service: StreamService, guard: Callable[[], None] | None = None
                       ) -> Callable[[WebSocket], Any]:
    """The ``WebSocketRoute`` endpoint serving ``GET /v1/ws`` over ``service``.

    Args:
        service: the stream service the socket's streams use.
        guard: the engine's "not started" check, called before a start or resume.
    """
    from starlette.websockets import WebSocketDisconnect  # the WSGI side imports this module

    gone = (WebSocketDisconnect, RuntimeError, OSError)

    async def endpoint(websocket: WebSocket) -> None:
        await WebSocketSession(websocket, service, guard, gone=gone).serve()
    return endpoint


class WebSocketSession:
    """One client socket: its reader, writer, and the streams it follows.

    Args:
        ws: the socket (accepted by ``serve``).
        service: the stream service the socket's streams use.
        guard: the engine's "not started" check, called before a start or resume.
        gone: what ``ws.send_text`` raises once the client left.
    """

    def __init__(self, ws: WebSocketTransport, service: StreamService,
                 guard: Callable[[], None] | None = None, *,
                 gone: tuple[type[BaseException], ...] = (RuntimeError, OSError)) -> None:
        self.ws, self.service, self.guard, self.gone = ws, service, guard, gone
        self.queue: asyncio.Queue[str] = asyncio.Queue(SEND_QUEUE)
        self.budget = wsp.SendBudget()
        self.streams: dict[str, asyncio.Task[None]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.overflow = asyncio.Event()
        self.sending = asyncio.Lock()  # one send at a time: the writer's or a pump's
        self.send_began: float | None = None  # when the send in progress began
        self.sent_at = time.monotonic()  # the last send (the heartbeat's clock)
        self.principal: Principal | None = None

    async def serve(self) -> None:
        """Serve the socket until the client leaves (or is closed 1008 or 1013)."""
        await self.ws.accept()
        header = self.ws.headers.get("authorization")
        try:
            self.principal = self.service.api_keys.authenticate(WS_PATH, header)
        except StreamBridgeError as error:
            if header is not None:  # a wrong key: say so and close
                await self.ws.send_text(wsp.error_message(error, None, "auth"))
                await self.ws.close(CLOSE_POLICY)
                return
            # no header: a browser sends {"type": "auth", "key": ...} first
        loop = asyncio.get_running_loop()
        waits = [loop.create_task(self._read()), loop.create_task(self._write()),
                 loop.create_task(self.overflow.wait())]
        policy = self.service.settings.policy
        if math.isfinite(policy.heartbeat):
            waits.append(loop.create_task(self._beat(policy.heartbeat)))
        if policy.send_timeout:
            waits.append(loop.create_task(self._watch(policy.send_timeout)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _stop_all([*waits, *self.streams.values(), *self.tasks])
        if self.overflow.is_set():
            log.info("websocket: a client stopped reading (%d messages queued): closed %d",
                     self.queue.qsize(), CLOSE_SLOW)
            while not self.queue.empty():  # never sent: free it while the close waits
                self.queue.get_nowait()
            try:
                async with asyncio.timeout(CLOSE_WAIT):
                    await self.ws.close(CLOSE_SLOW, "slow consumer")
            except (TimeoutError, RuntimeError, OSError):
                pass

    def offer(self, text: str) -> None:
        """Queue one message for the client; a full queue closes the socket (1013)."""
        if self.budget.admit(text):
            self.queue.put_nowait(text)
        else:
            self.overflow.set()

    async def send(self, text: str) -> bool:
        """Send one message of a stream: at once when nothing waits (a loop step less
        per token than through the writer), else behind what waits.

        Returns:
            False if the client left or stopped reading (the socket is ending).
        """
        if not self.queue.empty() or self.sending.locked():
            self.offer(text)
            return True
        try:
            await self._send(text)
        except self.gone:
            return False
        return True

    async def _send(self, text: str) -> None:
        # The queue hands its head to the writer, which takes the lock in the same
        # step, so a pump that finds both free is never ahead of a queued message.
        async with self.sending:
            self.send_began = time.monotonic()
            try:
                await self.ws.send_text(text)  # blocks while the client does not read
            finally:
                self.send_began = None
            self.sent_at = time.monotonic()

    async def _write(self) -> None:
        try:
            while True:
                text = await self.queue.get()
                self.budget.sent(text)
                await self._send(text)
        except self.gone:
            return  # the client left; the reader sees it too

    async def _beat(self, interval: float) -> None:
        """Offer a socket-level ``ping`` whenever nothing was sent for ``interval`` s."""
        while True:
            idle = time.monotonic() - self.sent_at
            if idle < interval:
                await asyncio.sleep(interval - idle)
                continue
            if self.queue.empty():  # else the writer is behind: no ping on top
                self.offer(wsp.PING_MESSAGE)
            await asyncio.sleep(interval)

    async def _watch(self, limit: float) -> None:
        """Close 1013 once a send has waited ``limit`` s (no timer per message)."""
        while True:
            await asyncio.sleep(limit / 4)
            began = self.send_began
            if began is not None and time.monotonic() - began >= limit:
                self.overflow.set()
                return

    async def _read(self) -> None:
        limit = self.service.settings.max_body_bytes
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                text = wsp.check_frame(message.get("text"), limit)
            except StreamBridgeError as error:
                self.offer(wsp.error_message(error, None, None))
            else:
                await self._handle(text)

    async def _handle(self, text: str) -> None:
        kind = stream_id = None
        try:
            msg = wsp.decode(text)
            kind, stream_id = msg.get("type"), msg.get("stream_id")
            if kind == "auth":
                self.principal = self.service.api_keys.authenticate(
                    WS_PATH, f"Bearer {msg.get('key') or ''}")
                self.offer(wsp.server_message(None, "auth", {"ok": True}))
                return
            kind = wsp.check_type(kind)
            if self.principal is None:  # keys are on and none was given yet
                self.principal = self.service.api_keys.authenticate(WS_PATH, None)
            if kind == "start":
                await self._start(msg)
            elif kind == "resume":
                await self._resume(wsp.stream_id_of(kind, msg), wsp.cursor_of(msg))
            else:
                self._spawn(self._cancel(wsp.stream_id_of(kind, msg), self.principal))
        except StreamBridgeError as error:
            self.offer(wsp.error_message(
                error, stream_id if isinstance(stream_id, str) else None, kind))

    async def _start(self, msg: dict[str, Any]) -> None:
        if self.guard is not None:
            self.guard()
        s = self.service.settings
        call = wsp.start_call(msg, default_agent=s.default_agent, max_body=s.max_body_bytes,
                              max_messages=s.max_messages)
        assert self.principal is not None
        stream = await self.service.open(call, self.principal)
        sid = stream.info.stream_id
        self.offer(wsp.server_message(sid, "started", {
            "conversation_id": stream.info.conversation_id, "ref": msg.get("ref")}))
        self._follow(stream)

    async def _resume(self, stream_id: str, cursor: str | None) -> None:
        if self.guard is not None:
            self.guard()
        if stream_id in self.streams:
            raise BadRequest(f"stream {stream_id!r} is already followed on this socket",
                             code="already_following")
        assert self.principal is not None
        self._follow(await self.service.subscribe(stream_id, cursor, "ndjson", self.principal))

    async def _cancel(self, stream_id: str, principal: Principal) -> None:
        try:
            result = await self.service.cancel(stream_id, principal)
        except StreamBridgeError as error:
            self.offer(wsp.error_message(error, stream_id, "cancel"))
            return
        self.offer(wsp.server_message(stream_id, "cancel", result))

    def _follow(self, stream: Streamable) -> None:
        sid = stream.info.stream_id
        task = asyncio.get_running_loop().create_task(self._pump(stream))
        self.streams[sid] = task
        task.add_done_callback(lambda _: self.streams.pop(sid, None))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _pump(self, stream: Streamable) -> None:
        sid, frames, ended = stream.info.stream_id, stream.frames(), False
        try:
            head = wsp.message_head(sid)
            async for frame in frames:
                if not await self.send(_relay(sid, head, frame)):
                    return  # the client left or stopped reading: serve() ends the socket
            ended = True
        except StreamBridgeError as error:  # failed before its first event
            ended = True
            self.offer(wsp.error_message(error, sid, "start"))
        finally:
            if not ended:  # the socket went: as an HTTP response whose client left
                stream.abort(Outcome.CLIENT_DISCONNECTED)
            await frames.aclose()
            await stream.finish(Outcome.CLIENT_DISCONNECTED)


async def _stop_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, also while the caller itself
    is being cancelled (one ``cancel_and_wait`` after another re-raised that at the first
    and left the rest pending: "Task was destroyed" when the loop closed); a task's own
    failure is raised, as ``cancel_and_wait`` does."""
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
