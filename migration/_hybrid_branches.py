"""The two branches of the hybrid front, built to share one loop and one admission.

- ``FlaggedRegistry``: the agent registry each branch's service sees; it narrows an
  agent to the form (sync or async) the flag picks for that branch.
- ``Handoff``: one Flask-branch request's hand-over of a declared endpoint to the
  native branch (the flag said async after the user's view built the agent request).
- ``run_lifespan``: runs a mounted ASGI app's lifespan (the native app's start-up
  and shutdown) inside the front's own.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from async_core import Agent, AgentRegistry, Settings

from ._flagfile import FlagStore
from .flags import Path, form_for

ON_DISCONNECT = "streambridge.on_disconnect"
Send = Callable[[dict[str, Any]], Awaitable[None]]


class FlaggedRegistry(AgentRegistry):
    """A live view of ``base`` for one branch: each agent narrowed to the flagged form.

    The engine runs the sync form when an agent has no async form (or when its
    service prefers sync); removing the form the flag does not want therefore
    selects the wanted one, and an agent with a single form keeps it. The flag
    file is consulted at every lookup, so a reload applies to the next stream.

    Args:
        base: the registered agents.
        store: the flag configuration in force.
        path: the branch this view serves.
    """

    def __init__(self, base: AgentRegistry, store: FlagStore, path: Path) -> None:
        super().__init__()
        self.base, self.store, self.path = base, store, path
        self._narrowed: dict[tuple[int, str], Agent] = {}

    def register(self, agent: Agent) -> None:
        """Register on the base registry (both branches see it)."""
        self.base.register(agent)

    def names(self) -> list[str]:
        """The base registry's names."""
        return self.base.names()

    def get(self, name: str) -> Agent:
        """The agent called ``name`` with only the flagged form (if it has that form)."""
        agent = self.base.get(name)
        form = form_for(self.store.current(), name, self.path)
        if agent.sync_fn is None or agent.async_fn is None:
            return agent
        key = (id(agent), form)
        narrowed = self._narrowed.get(key)
        if narrowed is None:
            drop = "async_fn" if form == "sync" else "sync_fn"
            narrowed = self._narrowed[key] = dataclasses.replace(agent, **{drop: None})
        return narrowed


def with_path_header(message: dict[str, Any], path: str) -> dict[str, Any]:
    """``message`` with X-Stream-Path added to a response start that lacks it."""
    if message["type"] != "http.response.start":
        return message
    headers = message.get("headers") or []
    if any(k.lower() == b"x-stream-path" for k, _ in headers):
        return message
    return {**message, "headers": [*headers, (b"x-stream-path", path.encode())]}


class Handoff:
    """A declared endpoint's request, handed from the Flask branch to the native one.

    The user's view (in a WSGI thread) builds the agent's request and calls the
    route hook; when the flag says async the hook stores it here, the view answers a
    placeholder, and ``send`` drops that placeholder (keeping its ``Set-Cookie``
    headers for the native response).
    """

    def __init__(self) -> None:
        self.body: dict[str, Any] | None = None
        self.path: str | None = None  # the flag's decision, once the view asked
        self.cookies: list[tuple[bytes, bytes]] = []

    def take(self, body: dict[str, Any]) -> None:
        """Keep ``body`` for the native branch (called from the WSGI thread)."""
        self.body = body

    def send(self, send: Send) -> Send:
        """The Flask branch's ``send``: passes through unless the request was handed off."""

        async def flask_send(message: dict[str, Any]) -> None:
            if self.body is None:  # X-Stream-Path on the legacy branch's errors too
                await send(message if self.path is None else with_path_header(message, self.path))
            elif message["type"] == "http.response.start":
                self.cookies = [(k, v) for k, v in message.get("headers") or []
                                if k.lower() == b"set-cookie"]

        return flask_send

    def native_send(self, send: Send) -> Send:
        """The native branch's ``send``: adds the placeholder's ``Set-Cookie`` headers."""

        async def with_cookies(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and self.cookies:
                message = {**message, "headers": [*message.get("headers", []), *self.cookies]}
            await send(message)

        return with_cookies


async def run_lifespan(app: Callable[..., Awaitable[None]]
                       ) -> Callable[[], Awaitable[None]]:
    """Start ``app``'s lifespan; return the coroutine function that shuts it down.

    Raises:
        RuntimeError: the app's start-up failed.
    """
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
             "state": {}}
    task = asyncio.get_running_loop().create_task(app(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    started = await from_app.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"native app start-up failed: {started.get('message', '')}")

    async def shutdown() -> None:
        await to_app.put({"type": "lifespan.shutdown"})
        await from_app.get()
        await task

    return shutdown


def wsgi_threads(settings: Settings, threads: int = 0) -> int:
    """Threads of the Flask branch: ``threads`` (``STREAMBRIDGE_HYBRID_THREADS``) when
    set, else one per stream slot and buffered slot, plus 16. Admission (503) is then
    what refuses streams, not a2wsgi's pool (10 threads by default, and silent).
    """
    if threads:
        return threads
    return (settings.max_streams or 1024) + settings.max_buffered + 16
