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
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from ._records import Outcome, Streamable
from ._tasks import cancel_and_wait
from .auth import Principal
from .exceptions import BadRequest, PayloadTooLarge, StreamBridgeError
from .protocol import ROUTES, parse_chat
from .service import StreamService

log = logging.getLogger("streambridge.ws")
WS_PATH = "/v1/ws"
SEND_QUEUE = 256  # messages waiting for a slow reader before the socket is closed 1013
SEND_QUEUE_BYTES = 1 << 20  # or bytes: the engine merges the deltas of a slow reader
CLOSE_POLICY = 1008  # a bad API key given in the Authorization header
CLOSE_SLOW = 1013  # the client did not read its messages (send queue full)
CLOSE_WAIT = 5.0  # seconds the 1013 close frame may wait behind unread data, then TCP drops
_FORMAT = {"format": "ndjson"}  # the native events, one JSON object each, with log ids


def websocket_endpoint(service: StreamService, guard: Callable[[], None] | None = None
                       ) -> Callable[[WebSocket], Any]:
    """The ``WebSocketRoute`` endpoint serving ``GET /v1/ws`` over ``service``.

    Args:
        service: the stream service the socket's streams use.
        guard: the engine's "not started" check, called before a start or resume.
    """
    async def endpoint(websocket: WebSocket) -> None:
        await _Socket(websocket, service, guard).serve()
    return endpoint


class _Socket:
    """One client socket: its reader, writer, and the streams it follows."""

    def __init__(self, websocket: WebSocket, service: StreamService,
                 guard: Callable[[], None] | None) -> None:
        self.ws, self.service, self.guard = websocket, service, guard
        self.queue: asyncio.Queue[str] = asyncio.Queue(SEND_QUEUE)
        self.streams: dict[str, asyncio.Task[None]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.overflow = asyncio.Event()
        self.sending = asyncio.Lock()  # one send at a time: the writer's or a pump's
        self.send_began: float | None = None  # when the send in progress began
        self.queued = 0  # characters waiting in ``queue``
        self.sent_at = time.monotonic()  # the last send (the heartbeat's clock)
        self.principal: Principal | None = None

    async def serve(self) -> None:
        await self.ws.accept()
        header = self.ws.headers.get("authorization")
        try:
            self.principal = self.service.api_keys.authenticate(WS_PATH, header)
        except StreamBridgeError as error:
            if header is not None:  # a wrong key: say so and close
                await self.ws.send_text(_error(error, None, "auth"))
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
            for task in (*waits, *self.streams.values(), *self.tasks):
                await cancel_and_wait(task)
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
        self.queued += len(text)
        if self.queued > SEND_QUEUE_BYTES or self.queue.full():
            self.overflow.set()
        else:
            self.queue.put_nowait(text)

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
        except (WebSocketDisconnect, RuntimeError, OSError):
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
                self.queued -= len(text)
                await self._send(text)
        except (WebSocketDisconnect, RuntimeError, OSError):
            return  # the client left; the reader sees it too

    async def _beat(self, interval: float) -> None:
        """Offer a socket-level ``ping`` whenever nothing was sent for ``interval`` s."""
        while True:
            idle = time.monotonic() - self.sent_at
            if idle < interval:
                await asyncio.sleep(interval - idle)
                continue
            if self.queue.empty():  # else the writer is behind: no ping on top
                self.offer(_PING)
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
            text = message.get("text")
            if text is None:
                self.offer(_error(BadRequest("binary frames are not accepted: send JSON "
                                             "text", code="binary_frame"), None, None))
            elif len(text.encode()) > limit:
                self.offer(_error(PayloadTooLarge(f"message exceeds the limit of {limit} "
                                                  "bytes"), None, None))
            else:
                await self._handle(text)

    async def _handle(self, text: str) -> None:
        kind = stream_id = None
        try:
            try:
                msg = json.loads(text)
            except ValueError:
                raise BadRequest("the message is not valid JSON", code="bad_json") from None
            if not isinstance(msg, dict):
                raise BadRequest("a message must be a JSON object", code="bad_message")
            kind, stream_id = msg.get("type"), msg.get("stream_id")
            if kind == "auth":
                self.principal = self.service.api_keys.authenticate(
                    WS_PATH, f"Bearer {msg.get('key') or ''}")
                self.offer(_message(None, "auth", {"ok": True}))
                return
            if kind not in ("start", "resume", "cancel"):
                raise BadRequest(f"unknown message type {kind!r}: start, resume, cancel "
                                 "or auth", code="unknown_type")
            if self.principal is None:  # keys are on and none was given yet
                self.principal = self.service.api_keys.authenticate(WS_PATH, None)
            if kind == "start":
                await self._start(msg)
            elif not isinstance(stream_id, str) or not stream_id:
                raise BadRequest(f"{kind} needs a stream_id")
            elif kind == "resume":
                await self._resume(stream_id, msg.get("cursor"))
            else:
                self._spawn(self._cancel(stream_id, self.principal))
        except StreamBridgeError as error:
            self.offer(_error(error, stream_id if isinstance(stream_id, str) else None, kind))

    async def _start(self, msg: dict[str, Any]) -> None:
        if self.guard is not None:
            self.guard()
        s = self.service.settings
        body = {k: v for k, v in msg.items() if k not in ("type", "ref")}
        call = parse_chat(ROUTES["/v1/chat"], json.dumps(body).encode(), headers={},
                          query=_FORMAT, default_agent=s.default_agent,
                          max_body=s.max_body_bytes, max_messages=s.max_messages)
        if not call.stream:
            raise BadRequest("stream must be true over a WebSocket")
        assert self.principal is not None
        stream = await self.service.open(call, self.principal)
        sid = stream.info.stream_id
        self.offer(_message(sid, "started", {"conversation_id": stream.info.conversation_id,
                                             "ref": msg.get("ref")}))
        self._follow(stream)

    async def _resume(self, stream_id: str, cursor: Any) -> None:
        if self.guard is not None:
            self.guard()
        if cursor is not None and not isinstance(cursor, str):
            raise BadRequest("cursor must be a string (an event id)", code="bad_cursor")
        if stream_id in self.streams:
            raise BadRequest(f"stream {stream_id!r} is already followed on this socket",
                             code="already_following")
        assert self.principal is not None
        self._follow(await self.service.subscribe(stream_id, cursor, "ndjson", self.principal))

    async def _cancel(self, stream_id: str, principal: Principal) -> None:
        try:
            result = await self.service.cancel(stream_id, principal)
        except StreamBridgeError as error:
            self.offer(_error(error, stream_id, "cancel"))
            return
        self.offer(_message(stream_id, "cancel", result))

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
            head = '{"stream_id":' + json.dumps(sid) + ',"id":"'
            async for frame in frames:
                if not await self.send(_relay(sid, head, frame)):
                    return  # the client left or stopped reading: serve() ends the socket
            ended = True
        except StreamBridgeError as error:  # failed before its first event
            ended = True
            self.offer(_error(error, sid, "start"))
        finally:
            if not ended:  # the socket went: as an HTTP response whose client left
                stream.abort(Outcome.CLIENT_DISCONNECTED)
            await frames.aclose()
            await stream.finish(Outcome.CLIENT_DISCONNECTED)


_PING = json.dumps({"stream_id": None, "id": None, "event": "ping", "data": None},
                   separators=(",", ":"))


# A native NDJSON line with its log id: ``{"event":<kind>,"seq":<n>,"id":<id>,...}``
# (``wire.NativeNDJSONEncoder``, ASCII only). Its members after the id are the
# message's ``data`` as they are: no decode and re-encode per token.
_LINE = re.compile(r'\{"event":"([a-z_]+)","seq":\d+,"id":"([^"\\]*)",(.*)\}\n?\Z', re.DOTALL)


def _relay(stream_id: str, head: str, frame: bytes) -> str:
    """The socket message of one NDJSON frame of ``stream_id`` (``head`` its prefix)."""
    text = frame.decode()
    found = _LINE.match(text)
    if found is None:  # no log id (a heartbeat) or an event without members
        event = json.loads(text)
        name, event_id = event.pop("event"), event.pop("id", None)
        event.pop("seq", None)
        return _message(stream_id, name, event, event_id)
    kind, event_id, members = found.groups()
    return f'{head}{event_id}","event":"{kind}","data":{{{members}}}}}'


def _message(stream_id: str | None, event: str, data: Any, event_id: str | None = None) -> str:
    return json.dumps({"stream_id": stream_id, "id": event_id, "event": event, "data": data},
                      separators=(",", ":"))


def _error(error: StreamBridgeError, stream_id: str | None, kind: Any) -> str:
    """An ``error`` message: the contract's ``{"code", "message"}`` and the message type."""
    data = {**error.body()["error"], "type": kind if isinstance(kind, str) else None}
    return _message(stream_id, "error", data)
