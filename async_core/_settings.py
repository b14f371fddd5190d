"""Configuration: the stream policy and the server settings, loaded in one place.

Every setting has an environment variable ``STREAMBRIDGE_<NAME>``; this module is the
only code that reads the environment: ``Settings.from_env`` for the server, and
``load_settings(kind)`` for any other frozen value object of settings (the providers',
the hybrid front's, the flag file's), parsed by the same rules with the same errors.
Durations are seconds (fractions allowed); ``0`` disables a timeout or limit where
the table in README.md says so. The few other places that touch ``os.environ`` say
why they must, and ``tests/test_architecture.py`` fails on any new one.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from .streamlog._settings import LogSettings  # the module: the package imports back

PathName = Literal["async", "legacy", "hybrid"]
AgentForm = Literal["sync", "async"]  # which form of an agent runs: the one word for it
AGENT_FORMS: tuple[AgentForm, ...] = ("sync", "async")

T = TypeVar("T")
ENV_PREFIX = "STREAMBRIDGE_"
ON_DISCONNECT = ("cancel", "continue")


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
        header_hold: longest time the response headers wait for the agent's first
            output; until something is sent, a failure is an ordinary HTTP error.
    """

    heartbeat: float = 15.0
    first_chunk_timeout: float = 30.0
    idle_timeout: float = 60.0
    total_timeout: float = 600.0
    send_timeout: float = 30.0
    buffer_size: int = 64
    retries: int = 2
    retry_backoff: float = 0.05
    header_hold: float = 1.0

    def __post_init__(self) -> None:
        _check_numbers(self)
        for name in ("heartbeat", "first_chunk_timeout", "idle_timeout", "total_timeout",
                     "send_timeout", "retry_backoff", "header_hold"):
            if math.isnan(getattr(self, name)):  # passes every comparison below
                raise ValueError(f"{name} must be a number, got nan")
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
        request_read_timeout: seconds a client has to send a request's headers and
            body before its connection is closed (slowloris); ``0`` unbounded.
        max_messages: most messages accepted in one request.
        default_agent: the agent used when a request names none.
        agent_form: which form of an agent runs when it has both: ``sync``, ``async``,
            or None for the path's own (legacy: sync; async: async). The loader also
            reads the older spelling ``STREAMBRIDGE_SYNC_AGENTS=1`` as ``sync``. ``sync`` on the
            async path needs a sync runner (``async_core.cli.create_async_app``
            finds one when legacy_bridge is installed); ``async`` on the
            legacy path runs async agents on the worker's loop thread.
        agents: extra agents to register, as comma-separated ``module:attribute``.
        database_url: SQLAlchemy URL of the store (``postgresql+asyncpg://...``);
            empty means the embedded SQLite file at ``database_path``; ``none``
            turns persistence off.
        database_path: the embedded SQLite file (WAL mode), created on first start.
        checkpoint_interval: seconds between transcript checkpoints while streaming.
        checkpoint_tokens: tokens between transcript checkpoints while streaming.
        webhook_urls: comma-separated endpoints that receive every finished turn.
        webhook_secret: the Standard Webhooks signing secret (``whsec_...``).
        webhook_allow: comma-separated networks webhooks may reach although they
            are not public (e.g. ``127.0.0.0/8,::1/128``).
        webhook_timeout: seconds one delivery attempt may take.
        webhook_max_attempts: attempts before a delivery is dead-lettered.
        webhook_backoff: seconds before the first retry; doubles each retry.
        webhook_backoff_max: ceiling of the delay between two attempts.
        api_keys: ``tenant:key`` pairs (comma-separated), or ``@path`` of a file
            with one pair a line; a key may be given as ``sha256:<hex>``.
        key_rate_limit: requests per second per API key (0: unlimited).
        key_max_streams: concurrent streams per API key (0: unlimited).
        socket_send_buffer: bytes the kernel may hold for one client connection
            (``SO_SNDBUF`` of the listening socket, which connections inherit), so a
            client that stops reading blocks the stream's writes, and is caught by
            the send timeout, after about this much; 0 keeps the kernel's
            autotuning (up to ``net.ipv4.tcp_wmem``, 4 MB by default).
        log: the stream log (``STREAMBRIDGE_REDIS_URL``, ``STREAMBRIDGE_LOG_*``, leases;
            ``async_core.streamlog.LogSettings``), read from the same variables.
        on_disconnect: what a client's disconnect does to its stream when the request
            does not say: ``cancel`` (stop the agent) or ``continue`` (run on; resume
            it with ``GET /v1/streams/{id}``).
        reconnect_grace: seconds a ``cancel`` stream whose readers all left stays
            alive for a resume before it is stopped; 0 stops it at once.
        max_background: runs going on without an attached request (``background``,
            ``on_disconnect=continue`` or a grace) at once per process; more get 503.
        limits_on_redis_failure: what the cluster limits do while Redis does not
            answer: ``local`` (the default: per-process limits, the cluster limits
            divided by ``limits_workers``), ``closed`` (refuse limited requests, 503)
            or ``open`` (admit without a concurrency limit).
        limits_workers: worker processes of the whole cluster, for ``local``.
        slot_lease_ttl: seconds a slot lease lives without a renewal (a killed
            worker's slots are free again after at most this long).
        slot_lease_renew: seconds between two renewals of a process' leases.
        limits_redis_timeout: seconds one admission call to Redis may take before
            the failure mode engages.
        agent_weights: ``agent:weight`` pairs, comma-separated: a stream of that agent
            takes ``weight`` slots of each of its scopes (a slow or long-context
            model counts for what it costs); every other stream takes 1.
        operator_key: the key an operator presents in ``X-Operator-Key`` to read
            ``GET /v1/limits``; empty: that route answers 404.
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
    request_read_timeout: float = 10.0
    max_messages: int = 1000
    default_agent: str = "demo"
    agent_form: AgentForm | None = None
    agents: str = ""
    database_url: str = field(default="", repr=False)  # may hold a password: never logged
    database_path: str = "var/streambridge.sqlite3"
    checkpoint_interval: float = 0.25
    checkpoint_tokens: int = 64
    webhook_urls: str = ""
    webhook_secret: str = field(default="", repr=False)  # a secret: never logged
    webhook_allow: str = ""
    webhook_timeout: float = 15.0
    webhook_max_attempts: int = 12
    webhook_backoff: float = 5.0
    webhook_backoff_max: float = 21600.0
    api_keys: str = field(default="", repr=False)  # secrets: never logged
    key_rate_limit: float = 0.0
    key_max_streams: int = 0
    socket_send_buffer: int = 262_144
    log: LogSettings = field(default_factory=LogSettings)
    on_disconnect: str = "cancel"
    reconnect_grace: float = 0.0
    max_background: int = 64
    limits_on_redis_failure: str = "local"
    limits_workers: int = 1
    slot_lease_ttl: float = 10.0
    slot_lease_renew: float = 3.0
    limits_redis_timeout: float = 1.0
    agent_weights: str = ""
    operator_key: str = field(default="", repr=False)  # a secret: never logged

    def __post_init__(self) -> None:
        _check_numbers(self)
        if self.agent_form == "":  # type: ignore[comparison-overlap]  # the older default
            object.__setattr__(self, "agent_form", None)
        if self.agent_form is not None and self.agent_form not in AGENT_FORMS:
            raise ValueError(f"{ENV_PREFIX}AGENT_FORM must be sync or async, "
                             f"got {self.agent_form!r}")
        if self.on_disconnect not in ON_DISCONNECT:
            raise ValueError(f"{ENV_PREFIX}ON_DISCONNECT must be cancel or continue, "
                             f"got {self.on_disconnect!r}")
        if self.limits_on_redis_failure not in ("open", "closed", "local"):
            raise ValueError(f"{ENV_PREFIX}LIMITS_ON_REDIS_FAILURE must be open, closed or "
                             f"local, got {self.limits_on_redis_failure!r}")
        if self.limits_workers < 1:
            raise ValueError(f"{ENV_PREFIX}LIMITS_WORKERS must be >= 1")
        if not 0 < self.slot_lease_renew < self.slot_lease_ttl:
            raise ValueError(f"{ENV_PREFIX}SLOT_LEASE_RENEW must be > 0 and below "
                             f"{ENV_PREFIX}SLOT_LEASE_TTL")
        if self.limits_redis_timeout <= 0:
            raise ValueError(f"{ENV_PREFIX}LIMITS_REDIS_TIMEOUT must be > 0")
        self.weights()  # a malformed pair is a start-up error

    def weights(self) -> dict[str, int]:
        """``agent_weights`` as a mapping (agent → slots a stream of it takes).

        Raises:
            ValueError: a pair is not ``agent:weight`` with a whole weight >= 1.
        """
        out: dict[str, int] = {}
        for pair in filter(None, (p.strip() for p in self.agent_weights.split(","))):
            name, _, weight = pair.rpartition(":")
            if not name or not weight.isdigit() or int(weight) < 1:
                raise ValueError(f"{ENV_PREFIX}AGENT_WEIGHTS: {pair!r} is not agent:weight "
                                 "with a whole weight >= 1")
            out[name] = int(weight)
        return out

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
        nested = {"policy": StreamPolicy, "log": LogSettings}
        parts: dict[str, Any] = {}
        for name, kind in nested.items():  # flat variables, one nested value object each
            names = {f.name for f in dataclasses.fields(kind)}
            kw = {k: overrides.pop(k) for k in list(overrides) if k in names}
            parts[name] = overrides.pop(name, None) or load_settings(kind, env, **kw)
        top_kw = _read_fields(env, cls, skip=nested)
        older: dict[str, Any] = {}  # STREAMBRIDGE_SYNC_AGENTS: agent_form's older spelling
        _read(env, "sync_agents", "bool", older)
        if older.get("sync_agents") and "agent_form" not in top_kw:
            top_kw["agent_form"] = "sync"
        return cls(**parts, **{**top_kw, **overrides})


def load_settings(kind: type[T], environ: Mapping[str, str] | None = None,
                  **overrides: Any) -> T:
    """Build ``kind``, a dataclass of settings, from its ``STREAMBRIDGE_<FIELD>`` variables.

    Each field named ``name`` is read from ``STREAMBRIDGE_<NAME>`` (unset or blank: the
    field's default) and parsed by its annotation (``float``, ``int``, ``bool``, else
    the stripped text); ``kind`` validates the values itself (``__post_init__``).

    Args:
        kind: the settings class (frozen, keyword-only, in the ``Settings`` style).
        environ: the mapping to read (default: ``os.environ``).
        **overrides: field values that win over the environment.

    Raises:
        ValueError: a variable does not parse, naming it; or ``kind`` refuses a value.
    """
    env = os.environ if environ is None else environ
    return kind(**{**_read_fields(env, kind), **overrides})


def _read_fields(env: Mapping[str, str], kind: type, skip: Collection[str] = ()
                 ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(kind):
        if f.name not in skip:
            _read(env, f.name, f.type, out)
    return out


def _check_numbers(obj: Any) -> None:
    """Every number of a settings object is finite and >= 0 (0 disables, where allowed)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{ENV_PREFIX}{f.name.upper()} must be a finite number >= 0, "
                             f"got {value!r}")


def _read(env: Mapping[str, str], name: str, typ: Any, out: dict[str, Any]) -> None:
    key = ENV_PREFIX + name.upper()
    raw = env.get(key)
    if raw is None or raw.strip() == "":
        return
    raw = raw.strip()
    kind = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if kind == "float":
            value = float(raw)
            if not math.isfinite(value):  # "nan" passes every range check (issue 10)
                raise ValueError(raw)
            out[name] = value
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
