"""Configuration: the stream policy and the server settings, loaded in one place.

Every setting has an environment variable ``STREAMBRIDGE_<NAME>``; ``Settings.from_env``
is the only code that reads the environment. Durations are seconds (fractions
allowed); ``0`` disables a timeout or limit where the table in README.md says so.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

PathName = Literal["async", "legacy", "hybrid"]

ENV_PREFIX = "STREAMBRIDGE_"


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamPolicy:
    """How one stream runs.

    Attributes:
        heartbeat: seconds without a write after which a heartbeat is sent.
        first_chunk_timeout: seconds to wait for the agent's first output.
        idle_timeout: longest gap between two agent outputs (heartbeats do not reset it).
        total_timeout: hard ceiling on a stream's duration.
        send_timeout: longest time one write to the client may block.
        buffer_size: agent outputs held between agent and client before the agent
            is paused (backpressure).
        retries: how often an agent failing before its first output is retried.
        retry_backoff: base of the exponential backoff between those retries.
    """

    heartbeat: float = 15.0
    first_chunk_timeout: float = 30.0
    idle_timeout: float = 60.0
    total_timeout: float = 600.0
    send_timeout: float = 30.0
    buffer_size: int = 64
    retries: int = 2
    retry_backoff: float = 0.05

    def __post_init__(self) -> None:
        for name in ("heartbeat", "first_chunk_timeout", "idle_timeout", "total_timeout",
                     "send_timeout", "retry_backoff"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.heartbeat == 0:
            raise ValueError("heartbeat must be > 0")
        if self.buffer_size < 1:
            raise ValueError("buffer_size must be >= 1")
        if self.retries < 0:
            raise ValueError("retries must be >= 0")


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """Everything a server needs, with embedded defaults that run out of the box.

    Attributes:
        policy: the per-stream policy.
        admission_timeout: seconds a request waits for a stream slot before 503.
        max_streams: concurrent streams per process (0: unlimited).
        max_streams_per_agent: concurrent streams per agent per process (0: unlimited).
        max_buffered: concurrent non-stream requests per process, a separate pool.
        rate_limit: requests per second per process (0: unlimited).
        rate_burst: requests allowed in a burst above the rate.
        drain_grace: seconds running streams get to finish after SIGTERM.
        max_body_bytes: largest accepted request body.
        max_messages: most messages accepted in one request.
        default_agent: the agent used when a request names none.
        sync_agents: on the async path, prefer an agent's sync implementation.
        agents: extra agents to register, as comma-separated ``module:attribute``.
    """

    policy: StreamPolicy = field(default_factory=StreamPolicy)
    admission_timeout: float = 5.0
    max_streams: int = 256
    max_streams_per_agent: int = 0
    max_buffered: int = 64
    rate_limit: float = 0.0
    rate_burst: int = 0
    drain_grace: float = 10.0
    max_body_bytes: int = 1_048_576
    max_messages: int = 1000
    default_agent: str = "demo"
    sync_agents: bool = False
    agents: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``STREAMBRIDGE_*`` variables, then apply ``overrides``.

        Args:
            environ: the mapping to read (default: ``os.environ``).
            **overrides: field values that win over the environment.

        Raises:
            ValueError: a variable does not parse, naming the variable.
        """
        env = os.environ if environ is None else environ
        policy_kw: dict[str, Any] = {}
        top_kw: dict[str, Any] = {}
        for f in dataclasses.fields(StreamPolicy):
            _read(env, f.name, f.type, policy_kw)
        for f in dataclasses.fields(cls):
            if f.name != "policy":
                _read(env, f.name, f.type, top_kw)
        policy_over = {k: overrides.pop(k) for k in list(overrides) if k in policy_kw or
                       k in {f.name for f in dataclasses.fields(StreamPolicy)}}
        policy = StreamPolicy(**{**policy_kw, **policy_over})
        return cls(policy=overrides.pop("policy", policy), **{**top_kw, **overrides})


def _read(env: Mapping[str, str], name: str, typ: Any, out: dict[str, Any]) -> None:
    key = ENV_PREFIX + name.upper()
    raw = env.get(key)
    if raw is None or raw.strip() == "":
        return
    raw = raw.strip()
    kind = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if kind == "float":
            out[name] = float(raw)
        elif kind == "int":
            out[name] = int(raw)
        elif kind == "bool":
            if raw.lower() not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ValueError(raw)
            out[name] = raw.lower() in {"1", "true", "yes", "on"}
        else:
            out[name] = raw
    except ValueError:
        raise ValueError(f"{key}={raw!r} is not a valid {kind}") from None
