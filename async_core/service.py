"""The stream service: everything between a parsed request and a transport.

Both paths call this: it resolves the agent, validates its options, admits the
request (slots, rate), and builds the ``StreamSession`` with its encoder, its
response headers and its finish hooks (metrics first; persistence and webhooks
plug in through ``hooks``). Stdlib and our own modules only; no web framework.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import _metrics as metrics
from ._admission import both_releases
from ._engine import SessionSettings, StreamSession
from ._lifecycle import Lifecycle
from ._logtee import LogTee
from ._parts import ServiceParts, build_parts
from ._records import FinishHook, Streamable, StreamInfo
from ._registry import default_registry
from ._settings import AgentForm, PathName, Settings
from ._sources import SyncRunner
from ._subscription import Subscription
from .agents import AgentRegistry, AgentRequest
from .auth import ANONYMOUS, Principal
from .exceptions import NotFound, Overloaded, RateLimited, StreamBridgeError, Unauthorized
from .protocol import ChatCall, new_id
from .streamlog import (
    Entry,
    StreamLog,
    StreamNotFound,
    decode_cursor,
)
from .streamlog import StreamMeta as LogMeta
from .streamlog import open_log as open_stream_log
from .wire import Event, Format, StreamMeta, buffered_body, make_encoder

if TYPE_CHECKING:
    from .store import Persistence

log = logging.getLogger("streambridge.service")
NATIVE_FORMATS = ("sse", "ndjson", "text")
LOG_CREATE_BOUND = 1.0  # seconds a new stream waits for the log (a Redis outage)
CANCEL_WAIT = 2.0  # seconds a cancel answered here waits for the run's outcome


class StreamService:
    """Turns a ``ChatCall`` into an admitted, running ``StreamSession``.

    What a service holds is path-agnostic (``ServiceParts``: admission, drain, store,
    log, runs, key limits); what it adds is one path's view: the label, the agents and
    their form. A second path of the same process composes with the first through
    ``shares``: the hybrid front's Flask branch shares its native branch's parts, so
    limits, readiness and the drain are per process, whichever branch serves.

    Args:
        settings: policy and limits.
        path: the label of the serving path (``async``, ``legacy``, ``hybrid``).
        registry: the agents (default: the built-in ones).
        sync_runner: the bridge that runs sync agents; None means async forms only.
        hooks: extra finish hooks, called once per stream after the metrics.
        lifecycle: the drain state shared with the server (one per process).
        form: the path's default agent form: which form of an agent with both runs
            (the legacy path passes ``sync``). ``settings.agent_form`` wins over it;
            with neither, ``async``.
        shares: another service of this process whose parts this one uses (its
            ``hooks`` and ``lifecycle`` then; pass neither). That service opens and
            closes them: ``start`` and ``aclose`` of this one do nothing.

    Raises:
        ValueError: ``hooks`` or ``lifecycle`` given together with ``shares``.
    """

    def __init__(self, settings: Settings, *, path: PathName,
                 registry: AgentRegistry | None = None,
                 sync_runner: SyncRunner | None = None,
                 hooks: Sequence[FinishHook] = (),
                 lifecycle: Lifecycle | None = None, form: AgentForm | None = None,
                 shares: StreamService | None = None) -> None:
        self.settings = settings
        self.path = path
        self.registry = registry or default_registry(settings)
        self.sync_runner = sync_runner
        self.form: AgentForm = settings.agent_form or form or "async"
        self._owner = shares is None
        if shares is not None:
            if hooks or lifecycle is not None:
                raise ValueError("a service that shares another's parts takes its hooks "
                                 "and lifecycle too")
            parts = shares._parts
        else:
            parts = build_parts(settings, path, lifecycle, hooks)
        self._parts: ServiceParts = parts
        self.lifecycle, self.admission, self.hooks = parts.lifecycle, parts.admission, parts.hooks
        self.api_keys, self.key_limits, self.runs = parts.api_keys, parts.key_limits, parts.runs

    @property
    def log(self) -> StreamLog:
        """The stream log (memory until ``start`` opens the configured one)."""
        return self._parts.log

    @property
    def persistence(self) -> Persistence | None:
        """The transcript store, once ``start`` opened it (None: off or not yet)."""
        return self._parts.persistence

    async def start(self) -> None:
        """Open the store on the running loop (the loop that runs the streams).

        Raises:
            StreamBridgeError: bad database or webhook configuration, with the reason.
        """
        from .store import Persistence  # SQLAlchemy loads only where a server starts

        if not self._owner:
            return
        parts = self._parts
        parts.log = await open_stream_log(self.settings.log)  # LogUnavailable names the URL
        await self.admission.start()
        try:
            parts.persistence = await Persistence.open(self.settings)
        except BaseException:
            await self.admission.aclose()
            raise
        if parts.persistence is not None:
            self.hooks.append(parts.persistence.finish)
            parts.log.on_swept = parts.persistence.swept  # a dead host's transcripts too

    async def aclose(self) -> None:
        """Flush pending transcripts, close the store and the log (graceful shutdown)."""
        if not self._owner:
            return
        await self.runs.aclose(self.settings.policy.send_timeout or 5.0)
        persistence, self._parts.persistence = self._parts.persistence, None
        self.log.on_swept = None
        if persistence is not None:
            await persistence.aclose()
        await self.log.aclose()
        await self.admission.aclose()

    async def limits(self, operator_key: str | None) -> dict[str, Any]:
        """``GET /v1/limits``: the live limit counts, for the operator key only.

        Raises:
            NotFound: no ``STREAMBRIDGE_OPERATOR_KEY`` is configured (404).
            Unauthorized: ``operator_key`` is missing or wrong (401).
        """
        expected = self.settings.operator_key
        if not expected:
            raise NotFound("GET /v1/limits needs STREAMBRIDGE_OPERATOR_KEY")
        if not hmac.compare_digest((operator_key or "").encode(), expected.encode()):
            raise Unauthorized("a valid X-Operator-Key is required")
        return await self.admission.view(self.registry.names())

    async def conversation(self, conversation_id: str,
                           principal: Principal = ANONYMOUS) -> dict[str, Any]:
        """The stored turns of a conversation of ``principal``'s tenant.

        Raises:
            NotFound: unknown, another tenant's, or persistence is off (404).
        """
        found = None
        if self.persistence is not None:
            found = await self.persistence.conversation(conversation_id, principal.tenant)
        if found is None:
            raise NotFound(f"conversation {conversation_id!r} not found")
        return found

    async def open(self, call: ChatCall, principal: Principal = ANONYMOUS
                   ) -> StreamSession | Subscription:
        """Validate, admit and build the session for ``call`` made by ``principal``.

        A stored conversation's earlier turns are prepended to the agent's messages.
        A streamed call is created in the stream log (its events are teed there). A
        detached one (``on_disconnect=continue``, ``background``, a reconnect grace)
        starts its run here and returns the first reader of its log instead.

        Raises:
            StreamBridgeError: unknown agent, bad options, another tenant's
                conversation (404), rate limited, overloaded.
        """
        agent = self.registry.get(call.agent)
        options = agent.check_options(call.options)
        use_sync = agent.async_fn is None or (self.form == "sync" and agent.sync_fn is not None)
        if use_sync and self.sync_runner is None:
            raise StreamBridgeError(f"agent {agent.name!r} needs a sync runner, and this "
                                    "server has none (serve it through legacy_bridge)")
        stream_id = new_id()
        detached = call.background or (call.stream and (
            (call.on_disconnect or self.settings.on_disconnect) == "continue"
            or self.settings.reconnect_grace > 0))
        if detached:
            self.runs.check_room()
        try:
            key_release = self.key_limits.acquire(principal)
        except (Overloaded, RateLimited):
            metrics.rejected(self.path, agent.name, call.format)
            raise
        messages, store = call.messages, self.persistence
        try:
            if store is not None:
                history = await store.begin(stream_id, call.conversation_id, principal.tenant,
                                            call.messages, new=call.new_conversation)
                messages = (*history, *call.messages)
            slot_release = await self.admission.admit(agent.name, buffered=not call.stream,
                                                      key=principal.key_id)
            lease = None
            if call.stream or call.background:
                try:
                    async with asyncio.timeout(LOG_CREATE_BOUND):
                        lease = await self.log.create(stream_id, tenant=principal.tenant,
                                                      conversation_id=call.conversation_id)
                except Exception as error:  # Redis unreachable: serve it, not resumable
                    down = _log_down(error)
                    if detached:  # a run with no reader needs the log
                        slot_release()
                        raise down from None
        except BaseException as error:
            key_release()
            if store is not None:
                store.forget(stream_id)
            if isinstance(error, (Overloaded, RateLimited)):
                metrics.rejected(self.path, agent.name, call.format)
            raise
        release = both_releases(slot_release, key_release)
        meta = StreamMeta(stream_id=stream_id, conversation_id=call.conversation_id,
                          model=agent.name, created=time.time(),
                          include_usage=call.include_usage)
        info = StreamInfo(stream_id, call.conversation_id, agent.name, self.path, call.format)
        request = AgentRequest(messages, options, call.conversation_id, stream_id)
        metrics.stream_started(self.path)
        tee = None if lease is None else LogTee(self.log, lease)
        # A filed checkpoint waits up to one commit tick: filing it that much sooner keeps
        # what a SIGKILL loses within one checkpoint interval.
        every_s = self.settings.checkpoint_interval
        if store is not None:
            every_s = max(every_s - store.commit_tick, 0.0)
        wiring = SessionSettings(
            policy=self.settings.policy, hooks=self.hooks, lifecycle=self.lifecycle,
            progress=store.progress if store is not None else None,
            progress_every=(self.settings.checkpoint_tokens, every_s))
        session = StreamSession(
            wiring, agent=agent, request=request, encoder=make_encoder(call.format, meta),
            info=info, release=release, sync_runner=self.sync_runner if use_sync else None,
            meta=meta, tee=tee)
        if tee is None:
            return session
        tee.session = session
        self.runs.add(tee, self.log)
        if not detached:
            return session
        cancels = (call.on_disconnect or self.settings.on_disconnect) == "cancel"
        grace = self.settings.reconnect_grace if cancels and not call.background else None
        run = self.runs.detach(session, tee, grace)
        return Subscription(self.log, cursor=None, tenant=None, encoder=session.encoder,
                            policy=session.policy, info=info,
                            run=None if call.background else run, tee=tee,
                            lifecycle=self.lifecycle)

    async def subscribe(self, stream_id: str, cursor: str | None, fmt: Format,
                        principal: Principal = ANONYMOUS) -> Subscription:
        """A reader of ``stream_id``'s log after ``cursor`` (``GET /v1/streams/{id}``).

        Raises:
            CursorError: a malformed, too long or foreign cursor (400 ``bad_cursor``).
            StreamNotFound: unknown, expired or another tenant's stream (404).
        """
        after = decode_cursor(stream_id, cursor)
        found = await self._meta(stream_id, principal)
        meta = StreamMeta(stream_id=stream_id, conversation_id=found.conversation_id,
                          model="", created=time.time())
        info = StreamInfo(stream_id, found.conversation_id, "", self.path, fmt)
        run = self.runs.detached.get(stream_id)
        return Subscription(self.log, cursor=after, tenant=principal.tenant,
                            encoder=make_encoder(fmt, meta), policy=self.settings.policy,
                            info=info, run=run, resume=True, lifecycle=self.lifecycle)

    async def cancel(self, stream_id: str, principal: Principal = ANONYMOUS) -> dict[str, Any]:
        """Stop ``stream_id`` wherever it runs (``POST /v1/streams/{id}/cancel``); idempotent.

        The owner here stops its run at once (and the answer waits, briefly, for its
        outcome); the durable intent in the log reaches an owner in another process.

        Returns:
            ``{"stream_id", "status", "outcome", "cancel_requested"}``: ``status`` is
            ``running`` (the owner is elsewhere and was told), ``done`` or ``error``;
            ``outcome`` the stream's end (``completed``, ``cancelled``, ...) once known.

        Raises:
            StreamNotFound: unknown, expired or another tenant's stream (404).
        """
        found = await self._meta(stream_id, principal)
        try:
            return await self._cancel(found)
        except StreamBridgeError:
            raise
        except Exception as error:  # Redis unreachable
            raise _log_down(error) from None

    async def _cancel(self, found: LogMeta) -> dict[str, Any]:
        stream_id = found.stream_id
        result = await self.log.request_cancel(stream_id) if found.status == "running" else None
        tee = self.runs.tees.get(stream_id)
        if tee is not None:
            tee.cancel()
            try:
                async with asyncio.timeout(CANCEL_WAIT):
                    await tee.ended.wait()
            except TimeoutError:
                pass
        meta = await self.log.meta(stream_id) or found
        outcome = None if meta.status == "running" else await self._outcome(stream_id)
        return {"stream_id": stream_id, "status": meta.status, "outcome": outcome,
                "cancel_requested": bool(result is not None or meta.cancel_requested)}

    async def _meta(self, stream_id: str, principal: Principal) -> LogMeta:
        try:
            found = await self.log.meta(stream_id)
        except ValueError:  # not usable as a key (the Redis backend checks): no such stream
            found = None
        except Exception as error:  # Redis unreachable
            raise _log_down(error) from None
        if found is None or found.tenant != principal.tenant:
            metrics.resumed(self.path, "gone")
            raise StreamNotFound(f"stream {stream_id!r} not found")
        return found

    async def _outcome(self, stream_id: str) -> str | None:
        """The outcome a finished stream's terminal entry tells."""
        async for item in self.log.read(stream_id, None):
            if isinstance(item, Entry) and item.terminal:
                return "completed" if item.event == "done" else str(item.data.get("code"))
        return None

    def headers(self, session: Streamable) -> dict[str, str]:
        """Return the contract's response headers for ``session``."""
        return {
            "X-Stream-Id": session.info.stream_id,
            "X-Conversation-Id": session.info.conversation_id,
            "X-Stream-Path": self.path,
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }

    @staticmethod
    def content_type(session: Streamable) -> str:
        """The Content-Type of ``session``'s stream, as Starlette would write it."""
        media = session.encoder.media_type
        if media.startswith("text/") and "charset=" not in media.lower():
            return media + "; charset=utf-8"
        return media

    @staticmethod
    def accepted(session: Streamable, location: str) -> dict[str, Any]:
        """The ``202 Accepted`` body of a background run (``"background": true``)."""
        return {"stream_id": session.info.stream_id,
                "conversation_id": session.info.conversation_id,
                "status": "running", "location": location}

    def body(self, session: StreamSession, events: list[Event]) -> dict[str, Any]:
        """Return the buffered JSON body for a finished ``stream: false`` request."""
        fmt = session.info.format
        assert session.meta is not None
        return buffered_body("sse" if fmt in NATIVE_FORMATS else fmt,  # type: ignore[arg-type]
                             session.meta, events)


_last_warning = [0.0]


def _log_down(error: BaseException) -> Overloaded:
    """Say (at most every 10 s) that the log is unreachable; the 503 to answer with."""
    if time.monotonic() - _last_warning[0] >= 10.0:
        _last_warning[0] = time.monotonic()
        log.warning("the stream log is unavailable (%s: %s): new streams are served "
                    "without it (not resumable), resumes and cancels get 503",
                    type(error).__name__, error)
    return Overloaded("the stream log is unavailable; retry shortly", retry_after=1.0)
