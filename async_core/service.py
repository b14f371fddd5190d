"""The stream service: everything between a parsed request and a transport.

Both paths call this: it resolves the agent, validates its options, admits the
request (slots, rate), and builds the ``StreamSession`` with its encoder, its
response headers and its finish hooks (metrics first; persistence and webhooks
plug in through ``hooks``). Stdlib and our own modules only; no web framework.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import _metrics as metrics
from ._admission import Admission
from ._engine import StreamSession
from ._lifecycle import Lifecycle
from ._records import FinishHook, StreamInfo
from ._registry import default_registry
from ._settings import PathName, Settings
from ._sources import SyncRunner
from .agents import AgentRegistry, AgentRequest
from .auth import ANONYMOUS, ApiKeys, KeyLimits, Principal
from .exceptions import NotFound, Overloaded, RateLimited, StreamBridgeError
from .protocol import ChatCall, new_id
from .wire import Event, StreamMeta, buffered_body, make_encoder

if TYPE_CHECKING:
    from .store import Persistence

NATIVE_FORMATS = ("sse", "ndjson", "text")


class StreamService:
    """Turns a ``ChatCall`` into an admitted, running ``StreamSession``.

    Args:
        settings: policy and limits.
        path: the label of the serving path (``async``, ``legacy``, ``hybrid``).
        registry: the agents (default: the built-in ones).
        sync_runner: the bridge that runs sync agents; None means async forms only.
        hooks: extra finish hooks, called once per stream after the metrics.
        lifecycle: the drain state shared with the server (one per process).
        prefer_sync: the path's default form: run an agent's sync form when it has
            one (the legacy path passes True). ``settings.agent_form`` wins over it;
            with neither, ``settings.sync_agents`` decides.
    """

    def __init__(self, settings: Settings, *, path: PathName,
                 registry: AgentRegistry | None = None,
                 sync_runner: SyncRunner | None = None,
                 hooks: Sequence[FinishHook] = (),
                 lifecycle: Lifecycle | None = None, prefer_sync: bool | None = None) -> None:
        self.settings = settings
        self.path = path
        self.registry = registry or default_registry(settings)
        self.sync_runner = sync_runner
        self.lifecycle = lifecycle or Lifecycle(settings.drain_grace)
        self.admission = Admission(settings, self.lifecycle)
        self.hooks: list[FinishHook] = [metrics.observe, *hooks]
        self.api_keys = ApiKeys.from_settings(settings)
        self.key_limits = KeyLimits(settings.key_rate_limit, settings.key_max_streams)
        self.persistence: Persistence | None = None
        if settings.agent_form not in ("", "sync", "async"):
            raise ValueError(f"STREAMBRIDGE_AGENT_FORM must be sync or async, "
                             f"got {settings.agent_form!r}")
        if settings.agent_form:
            self.prefer_sync = settings.agent_form == "sync"
        else:
            self.prefer_sync = settings.sync_agents if prefer_sync is None else prefer_sync

    async def start(self) -> None:
        """Open the store on the running loop (the loop that runs the streams).

        Raises:
            StreamBridgeError: bad database or webhook configuration, with the reason.
        """
        from .store import Persistence  # SQLAlchemy loads only where a server starts

        self.persistence = await Persistence.open(self.settings)
        if self.persistence is not None:
            self.hooks.append(self.persistence.finish)

    async def aclose(self) -> None:
        """Flush pending transcripts and close the store (graceful shutdown)."""
        persistence, self.persistence = self.persistence, None
        if persistence is not None:
            await persistence.aclose()

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

    async def open(self, call: ChatCall, principal: Principal = ANONYMOUS) -> StreamSession:
        """Validate, admit and build the session for ``call`` made by ``principal``.

        A stored conversation's earlier turns are prepended to the agent's messages.

        Raises:
            StreamBridgeError: unknown agent, bad options, another tenant's
                conversation (404), rate limited, overloaded.
        """
        agent = self.registry.get(call.agent)
        options = agent.check_options(call.options)
        use_sync = agent.async_fn is None or (self.prefer_sync and agent.sync_fn is not None)
        if use_sync and self.sync_runner is None:
            raise StreamBridgeError(f"agent {agent.name!r} needs a sync runner, and this "
                                    "server has none (serve it through legacy_bridge)")
        stream_id = new_id()
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
            slot_release = await self.admission.admit(agent.name, buffered=not call.stream)
        except BaseException as error:
            key_release()
            if store is not None:
                store.forget(stream_id)
            if isinstance(error, (Overloaded, RateLimited)):
                metrics.rejected(self.path, agent.name, call.format)
            raise
        release = _both(slot_release, key_release)
        meta = StreamMeta(stream_id=stream_id, conversation_id=call.conversation_id,
                          model=agent.name, created=time.time(),
                          include_usage=call.include_usage)
        info = StreamInfo(stream_id, call.conversation_id, agent.name, self.path, call.format)
        request = AgentRequest(messages, options, call.conversation_id, stream_id)
        metrics.stream_started(self.path)
        session = StreamSession(
            agent=agent, request=request, policy=self.settings.policy,
            encoder=make_encoder(call.format, meta), info=info, hooks=self.hooks,
            release=release, sync_runner=self.sync_runner if use_sync else None,
            lifecycle=self.lifecycle, meta=meta,
            progress=store.progress if store is not None else None,
            progress_every=(self.settings.checkpoint_tokens, self.settings.checkpoint_interval))
        return session

    def headers(self, session: StreamSession) -> dict[str, str]:
        """Return the contract's response headers for ``session``."""
        return {
            "X-Stream-Id": session.info.stream_id,
            "X-Conversation-Id": session.info.conversation_id,
            "X-Stream-Path": self.path,
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }

    @staticmethod
    def content_type(session: StreamSession) -> str:
        """The Content-Type of ``session``'s stream, as Starlette would write it."""
        media = session.encoder.media_type
        if media.startswith("text/") and "charset=" not in media.lower():
            return media + "; charset=utf-8"
        return media

    def body(self, session: StreamSession, events: list[Event]) -> dict[str, Any]:
        """Return the buffered JSON body for a finished ``stream: false`` request."""
        fmt = session.info.format
        assert session.meta is not None
        return buffered_body("sse" if fmt in NATIVE_FORMATS else fmt,  # type: ignore[arg-type]
                             session.meta, events)


def _both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def release() -> None:
        try:
            first()
        finally:
            second()

    return release
