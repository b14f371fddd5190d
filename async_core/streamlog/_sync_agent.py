"""Run a sync agent generator into the log from outside the server (a Celery task).

The same agent functions the server runs (``Agent.sync_fn``: a generator taking an
``AgentRequest``) stream through a ``PublishedStream``: text becomes ``delta``,
``StateUpdate`` becomes ``state``, ``Usage`` and ``Finish`` go into ``done``. The agent
gets the stream's cancel flag as ``request.cancel`` (so ``cancel.wait(s)`` returns at
once on a cancel), and on a cancel the generator is closed: ``GeneratorExit`` lands at
its current ``yield`` and its ``finally`` runs (the upstream response is closed).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ..agents import AgentRequest, Finish, StateUpdate, SyncAgentFn, Usage
from ..auth import DEFAULT_TENANT

if TYPE_CHECKING:
    from ._publisher import Publisher
    from ._stream import PublishedStream


def publish_agent(publisher: Publisher, agent: SyncAgentFn, request: AgentRequest, *,
                  stream_id: str | None = None, tenant: str = DEFAULT_TENANT) -> PublishedStream:
    """Run ``agent(request)`` to its end, publishing every output as one stream.

    Args:
        publisher: the process' publisher.
        agent: a sync agent: a generator function taking an ``AgentRequest`` and
            yielding text or the markers of ``async_core.agents``.
        request: what to ask; its ``conversation_id`` names the stream's conversation.
        stream_id: the stream's id (default: ``request.stream_id``, else a random one).
        tenant: the tenant that may read and cancel it (``default``: no API keys).

    Returns:
        The ended stream (``outcome``: ``completed``, ``cancelled``, ``agent_error``...).

    Raises:
        StreamExists: the stream already exists (a task re-run never generates twice).
        StaleOwner: the lease was lost (the stream was ended by a sweeper meanwhile).
        LogUnavailable: Redis is unreachable, or did not store the end in time.
        Exception: whatever the agent raised, after its ``error`` entry was stored.
    """
    with publisher.stream(stream_id or request.stream_id or None, tenant=tenant,
                          conversation_id=request.conversation_id) as s:
        req = dataclasses.replace(request, stream_id=s.stream_id, cancel=s.cancel_token)
        gen = agent(req)
        reason, usage = "stop", None
        try:
            for item in gen:
                if type(item) is str:
                    s.delta(item)  # raises StreamCancelled once a cancel arrived
                elif isinstance(item, StateUpdate):
                    s.state(item.data)
                elif isinstance(item, Usage):
                    usage = {"prompt_tokens": item.prompt_tokens,
                             "completion_tokens": item.completion_tokens,
                             "total_tokens": item.prompt_tokens + item.completion_tokens}
                elif isinstance(item, Finish):
                    reason = item.reason
                else:
                    raise TypeError(f"agent yielded a {type(item).__name__}; "
                                    "expected str or a marker")
        finally:
            close = getattr(gen, "close", None)  # an iterator that is not a generator
            if close is not None:
                close()  # GeneratorExit at its yield: the agent's finally runs now
        s.done(reason, usage)
    return s
