"""The ``ollama`` and ``openai`` agents: each a sync twin and an async twin.

Both forms of an agent take the same options, send the same request and parse
the same bytes (``_parse``); only the I/O differs. Which form runs is the
server's choice (``STREAMBRIDGE_AGENT_FORM``; the legacy path runs sync forms,
the async path async forms, by default).

Options (in the request's ``options``): ``model`` (within the settings' allowlist)
and the usual sampling parameters, passed through to the upstream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from ..agents import Agent, AgentItem, AgentRequest
from ..exceptions import BadRequest
from ..protocol import SAMPLING_KEYS
from ._parse import Provider
from ._settings import provider_settings

# The twins import requests and httpx on first use, not when async_core is imported
# (async_core.wire must stay importable without them: tests/test_architecture.py).


def validate_options(provider: Provider, options: Mapping[str, Any]) -> Mapping[str, Any]:
    """Check a request's options for ``provider``: known keys, an allowed model.

    Raises:
        BadRequest: an unknown option, or a model the settings do not allow.
    """
    unknown = sorted(set(options) - SAMPLING_KEYS - {"model"})
    if unknown:
        raise BadRequest(f"unknown {provider} option(s): {', '.join(unknown)}")
    model = options.get("model")
    if model is None:
        return options
    if not isinstance(model, str) or not model:
        raise BadRequest("options.model must be a non-empty string")
    default, allowed = provider_settings().allowed(provider)
    if model not in allowed and "*" not in allowed:
        raise BadRequest(f"options.model {model!r} is not allowed for {provider} "
                         f"(allowed: {', '.join(sorted(allowed - {'*'}))})")
    return options


def ollama_sync(request: AgentRequest) -> Iterator[AgentItem]:
    """Ollama ``/api/chat`` on ``requests``."""
    from ._sync import stream_sync

    return stream_sync("ollama", request)


def ollama_async(request: AgentRequest) -> AsyncIterator[AgentItem]:
    """Ollama ``/api/chat`` on ``httpx``."""
    from ._async import stream_async

    return stream_async("ollama", request)


def openai_sync(request: AgentRequest) -> Iterator[AgentItem]:
    """OpenAI-compatible ``/chat/completions`` on ``requests``."""
    from ._sync import stream_sync

    return stream_sync("openai", request)


def openai_async(request: AgentRequest) -> AsyncIterator[AgentItem]:
    """OpenAI-compatible ``/chat/completions`` on ``httpx``."""
    from ._async import stream_async

    return stream_async("openai", request)


OLLAMA_AGENT = Agent(name="ollama", sync_fn=ollama_sync, async_fn=ollama_async,
                     validate=lambda options: validate_options("ollama", options))
OPENAI_AGENT = Agent(name="openai", sync_fn=openai_sync, async_fn=openai_async,
                     validate=lambda options: validate_options("openai", options))
PROVIDER_AGENTS = [OLLAMA_AGENT, OPENAI_AGENT]
