"""Provider settings: where the upstreams are, which models a request may pick, timeouts.

Read once from ``STREAMBRIDGE_*`` (``ProviderSettings.from_env``), like the server's
own settings. The API key never appears in ``repr`` or in a log line.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from .._settings import load_settings


@dataclass(frozen=True, kw_only=True, slots=True)
class ProviderSettings:
    """Upstream LLM servers and how to talk to them.

    Attributes:
        ollama_url: base URL of the Ollama server (``/api/chat`` is appended).
        ollama_model: the model used when a request names none.
        ollama_models: other models a request may pick (comma-separated; ``*``: any).
        openai_base_url: base URL of an OpenAI-compatible API, up to ``/v1``.
        openai_model: the model used when a request names none.
        openai_models: other models a request may pick (comma-separated; ``*``: any).
        openai_api_key: sent as ``Authorization: Bearer``; never logged or shown.
        upstream_connect_timeout: seconds to open the TCP (and TLS) connection.
        upstream_first_chunk_timeout: seconds to wait for the response and its first
            body bytes (a slow model still loading is normal: keep this generous).
        upstream_idle_timeout: longest silence between two body reads (per chunk,
            not total). The engine's own first-chunk and idle timeouts are what the
            client sees; these are the socket-level backstops that free a blocked
            worker thread and its connection.
        upstream_max_retry_after: a 429/503 whose ``Retry-After`` asks for longer than
            this is not retried (the client gets ``upstream_rate_limited`` at once).
        upstream_max_connections: connection pool size per process and provider.
    """

    ollama_url: str = "http://127.0.0.1:11434"
    ollama_model: str = "llama3.2"
    ollama_models: str = ""
    openai_base_url: str = "https://api.openai.com/v1"
    openai_model: str = "gpt-4o-mini"
    openai_models: str = ""
    openai_api_key: str = field(default="", repr=False)
    upstream_connect_timeout: float = 5.0
    upstream_first_chunk_timeout: float = 60.0
    upstream_idle_timeout: float = 60.0
    upstream_max_retry_after: float = 10.0
    upstream_max_connections: int = 256

    def __post_init__(self) -> None:
        for name in ("upstream_connect_timeout", "upstream_first_chunk_timeout",
                     "upstream_idle_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.upstream_max_connections < 1:
            raise ValueError("upstream_max_connections must be >= 1")

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                          if f.repr)
        key = "set" if self.openai_api_key else "unset"
        return f"ProviderSettings({shown}, openai_api_key=<{key}>)"

    def allowed(self, provider: str) -> tuple[str, frozenset[str]]:
        """Return the default model of ``provider`` and the set a request may pick."""
        default, extra = ((self.ollama_model, self.ollama_models) if provider == "ollama"
                          else (self.openai_model, self.openai_models))
        names = {m.strip() for m in extra.split(",") if m.strip()}
        return default, frozenset(names | {default})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProviderSettings:
        """Build the settings from ``STREAMBRIDGE_<FIELD>`` variables.

        Raises:
            ValueError: a variable does not parse, naming the variable (never its value
                when it is the API key).
        """
        return load_settings(cls, environ)  # the one reader: same parsing, same errors


@functools.cache
def provider_settings() -> ProviderSettings:
    """The process's provider settings, read from the environment on first use."""
    return ProviderSettings.from_env()
