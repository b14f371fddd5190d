"""One stream published from a sync process: its flusher and watcher threads.

``Publisher.stream`` builds it; ``_publisher.py``'s docstring has the design. State::

    RUNNING ──done()/error()/__exit__──► ENDING (terminal pending) ──stored──► ENDED
       │                                     │
       └──── lease refused or expired ───────┴──► LOST (StaleOwner; nothing more is written)

Every method may be called from the thread that produces; the flusher and the
watcher only touch what the lock guards, the cancel token and the ``_over`` event.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from ..agents import AgentFailure
from . import _scripts as S
from ._ids import new_epoch
from ._mux import LOST
from ._signal import CancelSignal
from .exceptions import LogUnavailable, StaleOwner, StreamCancelled, StreamClosed

if TYPE_CHECKING:
    from ._publisher import Publisher

log = logging.getLogger("streambridge.streamlog")
CANCELLED = {"code": "cancelled", "message": "the stream was cancelled", "retryable": False}


def _json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


class PublishedStream:
    """A running stream this process publishes; see ``Publisher.stream``.

    Used as a context manager: leaving the block normally appends ``done``; an
    exception appends ``error`` (an ``AgentFailure``'s code and message, else
    ``agent_error`` with no details) and propagates; ``StreamCancelled`` appends
    ``error`` ``cancelled`` and is swallowed (a cancel is an expected end: see
    ``outcome``). Leaving waits until Redis has the terminal entry.

    Attributes:
        stream_id: the stream's id.
        tenant: the tenant that may read and cancel it.
        conversation_id: its conversation.
        cancel_token: the cancel flag, for a sync agent's ``AgentRequest.cancel``.
        outcome: once stored, ``completed``, ``cancelled``, ``agent_error`` (or the
            failure's code); ``None`` before.
    """

    def __init__(self, publisher: Publisher, stream_id: str, *, tenant: str,
                 conversation_id: str, fence: str, epoch: str, token: int) -> None:
        self._pub, self.stream_id = publisher, stream_id
        self.tenant, self.conversation_id = tenant, conversation_id
        self._fence, self._epoch, self._token = fence, epoch, token
        self._cond = threading.Condition()
        self._pending: list[list[Any]] = []  # [event, data] or ["delta", [parts], tokens]
        self._inflight: list[tuple[str, str, str]] = []  # sent, not yet stored (same ids)
        self._seq = self._tokens = 0
        self._terminal = ""  # the terminal event once appended
        self._force_epoch = False
        self._failure: BaseException | None = None
        self._closing = False
        self._over = threading.Event()  # terminal stored, lease lost, or closed
        self._watch_id: int | None = None
        self._t0 = time.monotonic()
        self._ttfc: float | None = None
        self.cancel_token = CancelSignal()
        self.outcome: str | None = None
        self._threads = [threading.Thread(target=fn, name=f"sb-pub-{name}-{stream_id}",
                                          daemon=True)
                         for name, fn in (("flush", self._flush_loop),
                                          ("watch", self._watch_loop))]
        for t in self._threads:
            t.start()

    @property
    def cancelled(self) -> bool:
        """Whether a cancel intent for this stream reached this process (no round trip)."""
        return self.cancel_token.is_set() and self._failure is None

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._terminal:
            raise StreamClosed(f"stream {self.stream_id!r} has ended")
        if self.cancel_token.is_set():
            raise StreamCancelled(f"stream {self.stream_id!r} was cancelled")

    def delta(self, text: str) -> None:
        """Append text; never waits (consecutive deltas of one batch become one entry).

        Raises:
            StreamCancelled: a cancel intent was recorded: stop producing.
            StaleOwner: the lease was lost (e.g. this process froze past its TTL).
            TypeError: ``text`` is not a ``str``.
        """
        self._check()
        if not isinstance(text, str):
            raise TypeError(f"delta text must be a str, not {type(text).__name__}")
        if not text:
            return
        with self._cond:
            if self._ttfc is None:
                self._ttfc = time.monotonic() - self._t0
            self._tokens += 1
            last = self._pending[-1] if self._pending else None
            if last is not None and last[0] == "delta":
                last[1].append(text)
                last[2] = self._tokens
            else:
                self._pending.append(["delta", [text], self._tokens])
            self._cond.notify()

    def state(self, data: Mapping[str, Any]) -> None:
        """Append an intermediate state (a ``state`` event); never waits.

        Raises:
            StreamCancelled: a cancel intent was recorded.
            StaleOwner: the lease was lost.
            TypeError: ``data`` is not JSON-serialisable.
        """
        self._check()
        payload = _json(dict(data))  # here, so that a bad state fails its caller
        with self._cond:
            self._pending.append(["state", payload])
            self._cond.notify()

    def done(self, finish_reason: str = "stop", usage: Mapping[str, int] | None = None
             ) -> None:
        """Append ``done`` and wait until Redis stores it.

        Raises:
            StreamCancelled: a cancel intent came first (leaving the block ends it
                ``cancelled``).
            LogUnavailable: Redis did not store it within the publisher's finish timeout.
        """
        self._check()
        data: dict[str, Any] = {
            "finish_reason": finish_reason if finish_reason in ("stop", "length") else "stop",
            "tokens": self._tokens,
            "ttfc_ms": None if self._ttfc is None else round(self._ttfc * 1000, 3),
            "duration_ms": round((time.monotonic() - self._t0) * 1000, 3),
            "conversation_id": self.conversation_id}
        if usage is not None:
            data["usage"] = dict(usage)
        self._end("done", data, "completed")

    def error(self, code: str, message: str, *, retryable: bool = False) -> None:
        """Append a terminal ``error`` and wait until Redis stores it.

        Args:
            code: a stable code, e.g. ``agent_error``.
            message: a sentence safe to show to the client.
            retryable: whether the same request may succeed if sent again.
        """
        if self._failure is not None:
            raise self._failure
        self._end("error", {"code": code, "message": message, "retryable": retryable}, code)

    def _end(self, event: str, data: dict[str, Any], outcome: str) -> None:
        payload = _json(data)
        with self._cond:
            if self._terminal:
                raise StreamClosed(f"stream {self.stream_id!r} has ended")
            self._terminal = event
            self._pending.append([event, payload])
            self._cond.notify()
        if not self._over.wait(self._pub.finish_timeout):
            raise LogUnavailable(f"STREAMBRIDGE_REDIS_URL={self._pub.settings.redis_url} did "
                                 f"not store the end of {self.stream_id!r} in "
                                 f"{self._pub.finish_timeout:g} s")
        if self._failure is not None:
            raise self._failure
        self.outcome = outcome

    # -- the flusher -----------------------------------------------------------------
    def _take(self) -> tuple[list[tuple[str, str, str]], str] | None:
        """Under the lock: give the pending items ids; return the batch to send."""
        with self._cond:
            while not self._pending and not self._inflight and not self._closing:
                self._cond.wait()
            if self._closing:
                return None
            for item in self._pending:
                self._seq += 1
                payload = (_json({"text": "".join(item[1]), "tokens": item[2]})
                           if item[0] == "delta" else item[1])
                self._inflight.append((f"{self._token}-{self._seq}", item[0], payload))
            self._pending.clear()
            excess = len(self._inflight) - self._pub.settings.redis_max_buffered
            if excess > 0:  # Redis readers will reset instead of seeing a gap
                del self._inflight[:excess]
                self._force_epoch = True
            sent = list(self._inflight)
            return sent, self._terminal if sent and sent[-1][1] == self._terminal else ""

    def _flush_loop(self) -> None:
        settings = self._pub.settings
        while (taken := self._take()) is not None:
            sent, end = taken
            args = S.append_args(settings, fence=self._fence, epoch=new_epoch(),
                                 tenant=self.tenant, conv=self.conversation_id, terminal=end,
                                 force_epoch=self._force_epoch, entries=sent)
            try:
                res = self._pub.flush(self.stream_id, args, end=bool(end),
                                      unblock=self._watch_id)
            except LOST as exc:
                self._pub.health.degrade(exc)
                time.sleep(settings.redis_retry)  # then retry the same ids (idempotent)
                continue
            except Exception as exc:
                log.exception("stream %s: append failed", self.stream_id)
                res = exc
            self._pub.health.recover()
            if isinstance(res, Exception) or res[0] == b"stale":
                self._lose(StaleOwner(f"Redis refused the appends of {self._fence} to "
                                      f"{self.stream_id!r}: {res!r}"))
                return
            with self._cond:
                del self._inflight[:len(sent)]
                self._force_epoch = False
                self._epoch = res[1].decode()
            if end:
                self._over.set()
                return

    def _lose(self, failure: BaseException) -> None:
        self._failure = failure
        self.cancel_token.set()  # stop producing
        self._over.set()

    # -- the watcher -----------------------------------------------------------------
    def _watch_loop(self) -> None:
        s, ctl = self._pub.settings, S.keys(self.stream_id)[3]
        client: Any = None
        next_renew = time.monotonic() + s.lease_renew
        while not self._over.is_set():
            try:
                if client is None:
                    client = self._pub.watcher_client()
                    self._watch_id = int(client.client_id())
                wait = max(0.001, min(next_renew - time.monotonic(), s.redis_block))
                if self.cancel_token.is_set():
                    self._over.wait(wait)  # nothing more to wake up for: only renew
                elif client.xread({ctl: b"0-0"}, count=1, block=int(wait * 1000)):
                    self.cancel_token.set()
                if time.monotonic() >= next_renew and not self._over.is_set():
                    next_renew = time.monotonic() + s.lease_renew
                    res = self._pub.renew(self.stream_id, self._fence)
                    if res == 3:
                        self.cancel_token.set()
                    elif res == 0:
                        self._lose(StaleOwner(f"lease {self._fence} on {self.stream_id!r} "
                                              "expired"))
            except ResponseError as exc:
                if "UNBLOCKED" in str(exc):
                    break  # the terminal flush released this read
                log.exception("stream %s: watcher failed", self.stream_id)
                self._over.wait(s.redis_retry)
            except LOST as exc:
                self._pub.health.degrade(exc)
                if client is not None:
                    client.close()
                client, self._watch_id = None, None
                self._over.wait(s.redis_retry)
        if client is not None:
            client.close()

    # -- the block -------------------------------------------------------------------
    def __enter__(self) -> PublishedStream:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> bool:
        try:
            if self._failure is None and not self._terminal:
                if isinstance(e, StreamCancelled) or (e is None and self.cancelled):
                    self._end("error", dict(CANCELLED), "cancelled")
                elif e is None:
                    self.done()
                elif isinstance(e, AgentFailure):
                    self.error(e.code, e.message, retryable=e.retryable)
                elif isinstance(e, Exception):
                    log.error("stream %s: the producer failed", self.stream_id, exc_info=e)
                    self.error("agent_error", "the producer failed")
                else:  # KeyboardInterrupt, SystemExit, a worker's shutdown
                    self.error("interrupted", "the producer was stopped", retryable=True)
            elif e is None and self._failure is not None:
                raise self._failure
        finally:
            self.close()
        return isinstance(e, StreamCancelled) and self.outcome == "cancelled"

    def close(self) -> None:
        """Stop the threads (without ending the stream: its lease then expires)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._over.set()
        flusher, watcher = self._threads
        flusher.join(5)
        watcher.join(0.05)
        if watcher.is_alive() and self._watch_id is not None:
            try:  # it entered its read after the terminal flush's unblock
                self._pub.client.client_unblock(self._watch_id, error=True)
            except LOST:
                pass
            watcher.join(1)
