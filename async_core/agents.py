"""Agents: what a stream streams from, and the registry that names them.

An agent is a sync generator function or an async generator function that takes
an :class:`AgentRequest` and yields text deltas (``str``) or the markers below.
An agent may exist in both forms (sync twin built on ``requests``, async twin
built on ``httpx``); the path and the migration flag choose which one runs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .exceptions import AgentFailure as AgentFailure  # agent authors' name for it
from .exceptions import BadRequest, UnknownAgent


@dataclass(frozen=True, slots=True)
class StateUpdate:
    """Yielded by an agent to publish intermediate state (a ``state`` event)."""

    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Usage:
    """Yielded by an agent (usually last) to pass provider token counts to ``done``."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Finish:
    """Yielded by an agent to set the ``finish_reason`` (default ``stop``)."""

    reason: str = "stop"


AgentItem = str | StateUpdate | Usage | Finish


class CancelToken(Protocol):
    """How a sync agent learns, between its yields, that its stream is over.

    A sync agent cannot be interrupted; it stops at its next yield once its queue
    is shut down. An agent that pauses or blocks between yields should use the
    token so that a client leaving stops it at once: ``token.wait(seconds)``
    instead of ``time.sleep`` (True means: stop), and ``token.add_callback(fn)``
    to close an upstream response from the cancelling thread (a blocked read then
    raises). Works in threads and in gevent greenlets alike.
    """

    def is_set(self) -> bool:
        """True once the stream is over."""
        ...

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds, returning early (True) on cancel."""
        ...

    def add_callback(self, fn: Callable[[], object]) -> None:
        """Call ``fn`` once on cancel (at once if already cancelled), from any thread."""
        ...


class _NeverCancelled:
    """The token of requests that have no runner behind them (tests, async agents)."""

    def is_set(self) -> bool:
        return False

    def wait(self, timeout: float | None = None) -> bool:
        if timeout:
            time.sleep(timeout)
        return False

    def add_callback(self, fn: Callable[[], object]) -> None:
        pass


NEVER_CANCELLED: CancelToken = _NeverCancelled()


@dataclass(frozen=True, slots=True)
class AgentRequest:
    """What an agent is asked to do.

    Attributes:
        messages: the conversation so far, oldest first: ``{"role", "content"}``.
        options: agent-specific options from the request body's ``options``.
        conversation_id: the conversation this turn belongs to.
        stream_id: the stream being produced.
        attempt: 0 for the first try, 1.. for retries before the first output.
        cancel: tells a sync agent its stream is over (see ``CancelToken``).
    """

    messages: tuple[Mapping[str, str], ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    conversation_id: str = ""
    stream_id: str = ""
    attempt: int = 0
    cancel: CancelToken = NEVER_CANCELLED

    def with_attempt(self, attempt: int) -> AgentRequest:
        """Return the same request for another attempt."""
        return dataclasses.replace(self, attempt=attempt)

    def with_cancel(self, cancel: CancelToken) -> AgentRequest:
        """Return the same request carrying ``cancel`` (set by the sync runner)."""
        return dataclasses.replace(self, cancel=cancel)


SyncAgentFn = Callable[[AgentRequest], Iterator[AgentItem]]
AsyncAgentFn = Callable[[AgentRequest], AsyncIterator[AgentItem]]
OptionsValidator = Callable[[Mapping[str, Any]], Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Agent:
    """A named agent with a sync form, an async form, or both.

    Attributes:
        name: the name requests use (``agent`` field, or ``model`` on the
            OpenAI and Ollama routes).
        sync_fn: a generator function, run in a worker thread through the bridge.
        async_fn: an async generator function, run on the event loop.
        validate: checks and normalises ``options``; raises ``BadRequest``.
    """

    name: str
    sync_fn: SyncAgentFn | None = None
    async_fn: AsyncAgentFn | None = None
    validate: OptionsValidator | None = None

    def __post_init__(self) -> None:
        if self.sync_fn is None and self.async_fn is None:
            raise ValueError(f"agent {self.name!r} needs a sync or an async form")

    def check_options(self, options: Mapping[str, Any]) -> Mapping[str, Any]:
        """Validate ``options`` for this agent (a 400 names the bad option)."""
        if self.validate is None:
            return options
        return self.validate(options)


class AgentRegistry:
    """Agents by name."""

    def __init__(self, agents: list[Agent] | None = None) -> None:
        self._agents: dict[str, Agent] = {}
        for agent in agents or []:
            self.register(agent)

    def register(self, agent: Agent) -> None:
        """Add (or replace) ``agent`` under its name."""
        self._agents[agent.name] = agent

    def get(self, name: str) -> Agent:
        """Return the agent called ``name``.

        Raises:
            UnknownAgent: no such agent (a 404 for the client).
        """
        try:
            return self._agents[name]
        except KeyError:
            known = ", ".join(sorted(self._agents)) or "none"
            raise UnknownAgent(f"unknown agent {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        return sorted(self._agents)


def load_agents(spec: str) -> list[Agent]:
    """Import agents named by ``spec``: comma-separated ``module:attribute`` strings.

    Each attribute is an ``Agent``, a list of them, or a callable returning either.

    Raises:
        ValueError: an entry cannot be imported or is not an agent, naming it.
    """
    import importlib

    found: list[Agent] = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        module_name, _, attr = entry.partition(":")
        try:
            obj: Any = getattr(importlib.import_module(module_name), attr or "AGENTS")
            if callable(obj) and not isinstance(obj, Agent):
                obj = obj()
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot load agents from {entry!r}: {e}") from None
        except Exception as e:  # the module or its factory raised: name it in one line
            raise ValueError(f"cannot load agents from {entry!r}: "
                             f"{type(e).__name__}: {e}") from None
        items = obj if isinstance(obj, (list, tuple)) else [obj]
        for item in items:
            if not isinstance(item, Agent):
                raise ValueError(f"{entry!r} gave a {type(item).__name__}, not an Agent")
            found.append(item)
    return found


def check_type(options: Mapping[str, Any], key: str, kind: type | tuple[type, ...],
               *, minimum: float | None = None, maximum: float | None = None) -> Any:
    """Return ``options[key]`` (or None) after checking its type and range.

    Raises:
        BadRequest: naming the option and what it must be.
    """
    if key not in options or options[key] is None:
        return None
    value = options[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise BadRequest(f"options.{key} must be a number, not a boolean")
    if not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise BadRequest(f"options.{key} must be of type {names}")
    if isinstance(value, float) and not math.isfinite(value):  # NaN passes range checks
        raise BadRequest(f"options.{key} must be a finite number")
    if minimum is not None and value < minimum:  # type: ignore[operator]
        raise BadRequest(f"options.{key} must be >= {minimum}")
    if maximum is not None and value > maximum:  # type: ignore[operator]
        raise BadRequest(f"options.{key} must be <= {maximum}")
    return value
