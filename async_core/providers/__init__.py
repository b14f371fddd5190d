"""Real upstreams: Ollama and OpenAI-compatible servers as agents, in sync and async twins.

The rule of this package: protocol code is written once and is sans-IO (``_parse``,
``_errors``, on ``async_core.wire``'s decoders); the twins only move bytes, the sync
one with ``requests`` (``_sync``), the async one with ``httpx`` (``_async``).

- ``_settings``: ``ProviderSettings`` from ``STREAMBRIDGE_*`` (URLs, models, key, timeouts).
- ``_parse``: the upstream request and the chunk parsers.
- ``_errors``: ``UpstreamError`` and the mapping of both providers' error shapes.
- ``_agents``: the ``ollama`` and ``openai`` agents, registered by default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._agents import OLLAMA_AGENT, OPENAI_AGENT, PROVIDER_AGENTS, validate_options
from ._errors import UpstreamError, from_status, parse_retry_after
from ._parse import (
    PROVIDERS,
    ChunkParser,
    OllamaChatParser,
    OpenAIChatParser,
    Provider,
    UpstreamCall,
    build_call,
    make_parser,
)
from ._settings import ProviderSettings, provider_settings

if TYPE_CHECKING:
    from ._async import stream_async
    from ._sync import stream_sync

__all__ = [
    "OLLAMA_AGENT",
    "OPENAI_AGENT",
    "PROVIDERS",
    "PROVIDER_AGENTS",
    "ChunkParser",
    "OllamaChatParser",
    "OpenAIChatParser",
    "Provider",
    "ProviderSettings",
    "UpstreamCall",
    "UpstreamError",
    "build_call",
    "from_status",
    "make_parser",
    "parse_retry_after",
    "provider_settings",
    "stream_async",
    "stream_sync",
    "validate_options",
]


def __getattr__(name: str) -> Any:
    # The twins load requests/httpx: only when asked for.
    if name == "stream_sync":
        from ._sync import stream_sync

        return stream_sync
    if name == "stream_async":
        from ._async import stream_async

        return stream_async
    raise AttributeError(f"module 'async_core.providers' has no attribute {name!r}")
