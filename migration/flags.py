"""The migration flag: which path serves a request, and which form of its agent runs.

A pure decision, no I/O: ``decide(config, request)`` takes the flag configuration
and what the front knows about one request, and returns a ``Decision``. The file
that holds the configuration, its reload and the ``flags`` subcommands live in
``_flagfile.py``; the hybrid front (``hybrid.py``) calls ``decide`` per request.

Precedence, first match wins:

1. ``X-Stream-Path-Override: legacy|async``, honoured only when the request also
   presents the configured operator key (``X-Operator-Key``); a refused override
   is reported in the decision and otherwise ignored.
2. A per-endpoint mode: an ``agents`` entry keyed by the request path (a key that
   starts with ``/``, e.g. ``agents."/chat".mode``: a declared endpoint of the user's
   app), then a per-agent mode (``agents.<name>.mode``).
3. The global mode: ``legacy``, ``async``, or a percentage of sticky buckets
   served by async. Buckets are ``blake2b(salt + key) mod 100`` where the key is
   the conversation id (or the tenant when ``sticky = "tenant"``, falling back to the
   conversation id when the tenant header is absent): stable across
   processes and restarts, so a conversation never flips while the flag holds.
   Raising the percentage only moves buckets from legacy to async.

The agent's form (``form``: ``sync`` or ``async``, the word ``Settings.agent_form``
uses too) is the per-agent ``form`` when set, else the path's default:
``legacy_form`` (``sync``) or ``async_form`` (``async``). An agent with only one form
runs that form whatever the flag says. Flag files written before issue 12 spell these
``impl``, ``legacy_impl`` and ``async_impl``: ``upgrade_keys`` reads them as the new
keys (and ``flags set`` writes the new ones).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

Path = Literal["legacy", "async"]
AgentForm = Literal["sync", "async"]  # the values of async_core's Settings.agent_form
Sticky = Literal["conversation", "tenant"]
Mode = Path | int  # "legacy", "async", or the percentage (0..100) of buckets on async
Reason = Literal["header", "agent", "mode", "bucket", "no_key"]

PATHS: tuple[Path, ...] = ("legacy", "async")
FORMS: tuple[AgentForm, ...] = ("sync", "async")
# The keys flag files spelled before issue 12 (read, never written).
OLDER_KEYS = {"legacy_impl": "legacy_form", "async_impl": "async_form"}
OLDER_AGENT_KEYS = {"impl": "form"}
BUCKETS = 100


def parse_mode(raw: object) -> Mode:
    """Read a mode: ``"legacy"``, ``"async"``, or a percentage (``25``, ``"25"``, ``"25%"``).

    Raises:
        ValueError: anything else, naming the value.
    """
    if isinstance(raw, str):
        text = raw.strip().lower()
        if text in PATHS:
            return text  # type: ignore[return-value]
        text = text.removesuffix("%").strip()
        if text.isdigit():
            raw = int(text)
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= 100:
        return raw
    raise ValueError(f"mode must be 'legacy', 'async' or a percentage 0-100, got {raw!r}")


def _check(value: object, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}, got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentFlag:
    """A per-agent override; ``None`` fields follow the global configuration.

    Attributes:
        mode: this agent's own mode (``legacy``, ``async`` or a percentage).
        form: the form of the agent that runs on either path (``sync`` or ``async``).
    """

    mode: Mode | None = None
    form: AgentForm | None = None

    def __post_init__(self) -> None:
        if self.mode is not None:
            object.__setattr__(self, "mode", parse_mode(self.mode))
        if self.form is not None:
            _check(self.form, FORMS, "form")


@dataclass(frozen=True, kw_only=True, slots=True)
class FlagConfig:
    """The whole flag: one immutable snapshot, replaced as a whole on reload.

    Attributes:
        mode: ``legacy``, ``async``, or the percentage of buckets served by async.
        sticky: bucket by ``conversation`` id or by ``tenant``.
        tenant_header: the request header naming the tenant.
        salt: mixed into the bucket hash (changing it reshuffles every bucket).
        legacy_form: the agent form run on the legacy path by default.
        async_form: the agent form run on the async path by default.
        agents: per-agent overrides by agent name.
        operator_key: the key that unlocks ``X-Stream-Path-Override`` ("" disables it).
    """

    mode: Mode = "legacy"
    sticky: Sticky = "conversation"
    tenant_header: str = "x-tenant-id"
    salt: str = ""
    legacy_form: AgentForm = "sync"
    async_form: AgentForm = "async"
    agents: Mapping[str, AgentFlag] = field(default_factory=dict)
    operator_key: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", parse_mode(self.mode))
        _check(self.sticky, ("conversation", "tenant"), "sticky")
        _check(self.legacy_form, FORMS, "legacy_form")
        _check(self.async_form, FORMS, "async_form")
        object.__setattr__(self, "tenant_header", self.tenant_header.strip().lower())
        agents = {}
        for name, flag in dict(self.agents).items():
            agents[name] = flag if isinstance(flag, AgentFlag) else AgentFlag(**flag)
        object.__setattr__(self, "agents", MappingProxyType(agents))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: FlagConfig | None = None) -> FlagConfig:
        """Build a config from a file's mapping; missing keys come from ``base``.

        Raises:
            ValueError: an unknown key or a bad value, naming it.
        """
        data = upgrade_keys(data)
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown flag setting(s): {', '.join(sorted(unknown))}")
        current = base.to_dict(redact=False) if base is not None else {}
        try:
            return cls(**{**current, **data})
        except TypeError as e:
            raise ValueError(str(e)) from None

    def to_dict(self, *, redact: bool = True) -> dict[str, Any]:
        """The config as plain data (for ``flags show`` and the file writer)."""
        agents = {name: {k: v for k, v in (("mode", f.mode), ("form", f.form)) if v is not None}
                  for name, f in sorted(self.agents.items())}
        key = ("<set>" if self.operator_key else "") if redact else self.operator_key
        return {"mode": self.mode, "sticky": self.sticky, "tenant_header": self.tenant_header,
                "salt": self.salt, "legacy_form": self.legacy_form,
                "async_form": self.async_form, "agents": agents, "operator_key": key}


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What the front knows about one request when it decides.

    Attributes:
        agent: the agent named by the request.
        conversation_id: the conversation (the front assigns one when missing).
        tenant: the tenant header's value, if any.
        override: the ``X-Stream-Path-Override`` header, if any.
        presented_key: the ``X-Operator-Key`` header, if any.
        endpoint: the request path (per-endpoint modes are keyed by it).
    """

    agent: str
    conversation_id: str = ""
    tenant: str = ""
    override: str = ""
    presented_key: str = ""
    endpoint: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """Which path serves a request and which agent form runs, and why.

    Attributes:
        path: ``legacy`` or ``async``.
        form: ``sync`` or ``async`` (the preferred agent form; see the module doc).
        reason: what decided: ``header``, ``agent`` (a per-agent or per-endpoint mode), ``mode``
            (fixed global mode), ``bucket`` (percentage), ``no_key`` (percentage but
            no sticky key: the request stays on legacy).
        bucket: the sticky bucket (0..99) when one was computed.
        override_refused: an override header came without the right key.
    """

    path: Path
    form: AgentForm
    reason: Reason
    bucket: int | None = None
    override_refused: bool = False


def bucket_of(key: str, salt: str = "") -> int:
    """The sticky bucket (0..99) of ``key``: blake2b, identical in every process."""
    digest = hashlib.blake2b((salt + "\0" + key).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def form_for(config: FlagConfig, agent: str, path: Path) -> AgentForm:
    """The agent form ``config`` prefers for ``agent`` served on ``path``."""
    flag = config.agents.get(agent)
    if flag is not None and flag.form is not None:
        return flag.form
    return config.legacy_form if path == "legacy" else config.async_form


def upgrade_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """A flag file's data with the older keys (``legacy_impl``, ``async_impl``,
    ``agents.<name>.impl``) renamed to the current ones; everything else as it is.

    Raises:
        ValueError: a key is given in both spellings.
    """
    out = _renamed(data, OLDER_KEYS, "")
    agents = out.get("agents")
    if isinstance(agents, Mapping):
        out["agents"] = {name: _renamed(flag, OLDER_AGENT_KEYS, f"agents.{name}.")
                         if isinstance(flag, Mapping) else flag
                         for name, flag in agents.items()}
    return out


def _renamed(data: Mapping[str, Any], names: Mapping[str, str], where: str) -> dict[str, Any]:
    out = dict(data)
    for old, new in names.items():
        if old in out:
            if new in out:
                raise ValueError(f"{where}{old} is the older spelling of {where}{new}: "
                                 "give one of them")
            out[new] = out.pop(old)
    return out


def key_ok(config: FlagConfig, presented: str) -> bool:
    """True when ``presented`` is the configured operator key (constant time)."""
    if not config.operator_key or not presented:
        return False
    return hmac.compare_digest(config.operator_key.encode(), presented.encode())


def _own_mode(config: FlagConfig, request: RouteRequest) -> Mode | None:
    """The endpoint's mode (an ``agents`` key starting with ``/``), else the agent's."""
    keys = (request.endpoint, request.agent) if request.endpoint.startswith("/") else (
        request.agent,)
    for key in keys:
        flag = config.agents.get(key)
        if flag is not None and flag.mode is not None:
            return flag.mode
    return None


def decide(config: FlagConfig, request: RouteRequest) -> Decision:
    """Decide the path and agent form of one request (pure: same inputs, same answer)."""
    override = request.override.strip().lower()
    refused = False
    if override:
        if override in PATHS and key_ok(config, request.presented_key):
            path: Path = override  # type: ignore[assignment]
            return Decision(path, form_for(config, request.agent, path), "header")
        refused = True
    own = _own_mode(config, request)
    mode = own if own is not None else config.mode
    fixed: Reason = "agent" if own is not None else "mode"
    bucket: int | None = None
    if mode in PATHS:
        path, reason = mode, fixed  # type: ignore[assignment]
    elif mode == 0 or mode == 100:
        path, reason = ("async" if mode == 100 else "legacy"), fixed
    else:
        key = request.tenant if config.sticky == "tenant" else ""
        key = key or request.conversation_id
        if not key:
            path, reason = "legacy", "no_key"
        else:
            bucket = bucket_of(key, config.salt)
            path, reason = ("async" if bucket < int(mode) else "legacy"), "bucket"
    return Decision(path, form_for(config, request.agent, path), reason, bucket, refused)
