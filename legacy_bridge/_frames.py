"""The engine-to-WSGI direction of the seam: the pump task and the WSGI body (frames_q).

One pump task per stream, on the loop, moves the session's frames into frames_q (a
:class:`SeamQueue` of ``FRAME_QUEUE`` frames); the WSGI body blocks in
``get_batch()`` and joins what is queued into one write. See ``_seam.py`` for the
seam as a whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeAlias

from async_core import Outcome, Streamable
from async_core.exceptions import StreamBridgeError

from ._glue import ThreadGlue
from ._janus_queue import QueueShutDown, SeamQueue

log = logging.getLogger("streambridge.legacy")
FRAME_QUEUE = 4  # frames (each a coalesced batch) queued for the body: what a stalled client pins
FAILURE_HANDOVER = 30.0  # seconds the body gets to read a failure when send_timeout is 0
# environ key: the server waits for the first frame on its loop (WSGIBody.afirst) and
# answers a failure before it; the view returns the body at once (migration/hybrid.py).
FIRST_ON_LOOP = "streambridge.first_on_loop"
# What the answer to a failure before the first byte drops of the view's headers: the
# stream's own (its content type and anti-buffering headers). The hybrid front's answer
# drops the same ones (migration/_hybrid_body.py).
STREAM_ONLY_HEADERS = frozenset(("content-type", "content-length", "cache-control",
                                 "x-accel-buffering"))


class _FailedBeforeFirstByte:
    """Put into frames_q when the stream failed before its first frame (an HTTP error)."""

    __slots__ = ("error",)

    def __init__(self, error: StreamBridgeError) -> None:
        self.error = error


FramesQueue: TypeAlias = SeamQueue[Any]  # bytes, or one _FailedBeforeFirstByte


def make_frames_queue(glue: ThreadGlue) -> FramesQueue:
    """A new frames_q (engine -> WSGI body) for one stream."""
    return SeamQueue(glue, FRAME_QUEUE)


class _OnLoop(Protocol):
    def on_loop(self, fn: Callable[..., object], *args: Any) -> None: ...


class WSGIBody:
    """The WSGI response iterable of one stream: reads frames_q, joins what is queued."""

    def __init__(self, bridge: _OnLoop, session: Streamable, frames: FramesQueue) -> None:
        self._bridge, self._frames = bridge, frames
        self.session = session  # public: the stream this body reads
        self._done = False
        self._first: bytes | None = None

    def __iter__(self) -> WSGIBody:
        return self

    def first(self) -> None:
        """Block until the first frame (within ``header_hold``), so headers can wait for it.

        Raises:
            StreamBridgeError: the stream failed before its first byte: answer with it.
        """
        try:
            self._first = self.__next__()
        except StopIteration:
            self._first = b""

    async def afirst(self) -> None:
        """``first()`` on the loop, for a server that writes the body from there (the
        hybrid front: ``FIRST_ON_LOOP`` in the environ), so no thread waits for it.

        Raises:
            StreamBridgeError: the stream failed before its first byte: answer with it.
        """
        try:
            self._first = self._take(await self._frames.aget_batch())
        except QueueShutDown:  # closed meanwhile (the client left), or EOF
            self._done, self._first = True, b""

    def __next__(self) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        try:
            chunks = self._frames.get_batch()  # every frame queued since the last read
        except QueueShutDown:  # EOF: the terminal frame was read
            self._done = True
            raise StopIteration from None
        return self._take(chunks)

    def _take(self, chunks: list[Any]) -> bytes:
        if isinstance(chunks[0], _FailedBeforeFirstByte):
            self._done = True  # taking it ended the pump's wait (issue 10, item 8)
            raise chunks[0].error
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def frames_on_loop(self) -> AsyncIterator[bytes]:
        """After ``first()``, the frames still to come, read on the loop (the hybrid front
        writes them from there); ``close()`` and the pump's send timeout apply as ever."""
        if self._first:
            yield self._first
        self._first, frames = None, self._frames
        try:
            while True:  # EOF (the terminal frame was read) raises
                yield b"".join(await frames.aget_batch())
        except QueueShutDown:
            pass
        self._done = True

    def close(self) -> None:
        """Called by the WSGI server at the end, or when a write failed (client gone)."""
        if self._done:
            return
        self._done = True
        self._frames.shutdown(immediate=True)  # the pump's put raises at once
        self._bridge.on_loop(self.session.abort, Outcome.CLIENT_DISCONNECTED)


async def pump(session: Streamable, frames: FramesQueue) -> None:
    """Move ``session``'s frames into frames_q until its end, then finish the session.

    Runs on the loop, one task per stream. A full queue for longer than the send
    timeout ends the stream (``send_timeout``); a body closed by the server ends it
    as ``client_disconnected``; a failure before the first frame is handed to the
    body as an HTTP error.
    """
    send_timeout = session.policy.send_timeout or None
    reason = Outcome.CLIENT_DISCONNECTED
    stream = session.frames()
    try:
        async for frame in stream:
            if not frames.try_put(frame):  # the client is behind: wait, but not forever
                async with asyncio.timeout(send_timeout):
                    await frames.aput(frame)
        frames.shutdown()  # EOF once the body has read what is queued
        async with asyncio.timeout(send_timeout):
            await frames.drained()
    except StreamBridgeError as error:  # failed before the first byte: an HTTP error
        # The body is already waiting in first(); it takes the error and answers. Wait
        # for that (the finally below would drop it), but not for longer than a send.
        try:
            frames.try_put(_FailedBeforeFirstByte(error))  # nothing was queued: room
            frames.shutdown()
            async with asyncio.timeout(send_timeout or FAILURE_HANDOVER):
                await frames.drained()
        except TimeoutError:
            log.info("stream %s: its error was not read in time", session.info.stream_id)
        except QueueShutDown:  # the body was closed meanwhile: nobody to answer
            pass
    except TimeoutError:
        reason = Outcome.SEND_TIMEOUT
        session.abort(reason)
    except QueueShutDown:
        reason = Outcome.CLIENT_DISCONNECTED  # the body was closed
        session.abort(reason)
    except asyncio.CancelledError:
        reason = Outcome.SHUTDOWN
        raise
    finally:
        await stream.aclose()
        await frames.aclose()
        await session.finish(reason)
