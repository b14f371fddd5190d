"""API keys and tenants, sans-IO: both apps call these same functions.

Keys come from ``STREAMBRIDGE_API_KEYS`` as ``tenant:key`` pairs (comma-separated,
or ``@/path/file`` with one pair a line, ``#`` comments allowed). Only their
SHA-256 digests are kept in memory; a pair may give the digest itself as
``tenant:sha256:<64 hex>`` so plaintext keys need not sit in configuration.

With keys configured, every route but ``/healthz``, ``/readyz`` and ``/metrics``
needs ``Authorization: Bearer <key>`` (else 401). Each key belongs to one tenant:
conversations (and streams) of another tenant answer 404, never 403, so ids do not
leak. Each key has a request rate (429) and a concurrency limit (503), both with
``Retry-After``. Without keys every caller is the tenant ``default``, and the
server refuses to bind anything but loopback (``check_bind``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ._settings import Settings
from .exceptions import ConfigError, Overloaded, RateLimited, Unauthorized

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
DEFAULT_TENANT = "default"


class AuthConfigError(ConfigError):
    """The key configuration (or the bind address without keys) is refused at start-up."""


class InvalidKey(Unauthorized):
    """401 with ``WWW-Authenticate: Bearer`` (RFC 6750)."""

    def headers(self) -> dict[str, str]:
        """The challenge header of a bearer-token API."""
        return {"WWW-Authenticate": 'Bearer realm="streambridge"'}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a tenant, and which of its keys (a digest prefix, never the key)."""

    tenant: str
    key_id: str = ""


ANONYMOUS = Principal(DEFAULT_TENANT)


def digest(key: str) -> str:
    """The SHA-256 hex digest under which ``key`` is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    """The configured keys, by digest.

    Args:
        digests: SHA-256 hex digest of each key -> its tenant.
    """

    def __init__(self, digests: Mapping[str, str]) -> None:
        self._tenants = dict(digests)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        """Parse ``settings.api_keys``.

        Raises:
            AuthConfigError: an entry is malformed or the file is unreadable, naming it.
        """
        raw = settings.api_keys.strip()
        if raw.startswith("@"):
            try:
                raw = Path(raw[1:]).read_text(encoding="utf-8")
            except OSError as e:
                raise AuthConfigError(f"STREAMBRIDGE_API_KEYS: cannot read {raw[1:]!r}: "
                                      f"{e.strerror}") from None
        entries = [line.split("#", 1)[0].strip() for chunk in raw.splitlines()
                   for line in chunk.split(",")]
        digests: dict[str, str] = {}
        for n, entry in enumerate(e for e in entries if e):
            tenant, sep, key = entry.partition(":")
            if not sep or not tenant.strip() or not key.strip():
                raise AuthConfigError(f"STREAMBRIDGE_API_KEYS entry {n + 1} is not "
                                      "tenant:key")
            key = key.strip()
            if key.startswith("sha256:"):
                hexd = key[7:].lower()
                if len(hexd) != 64 or any(c not in "0123456789abcdef" for c in hexd):
                    raise AuthConfigError(f"STREAMBRIDGE_API_KEYS entry {n + 1}: sha256: "
                                          "needs 64 hex digits")
                digests[hexd] = tenant.strip()
            else:
                if len(key) < 16:
                    raise AuthConfigError(f"STREAMBRIDGE_API_KEYS entry {n + 1}: a key needs "
                                          "at least 16 characters")
                digests[digest(key)] = tenant.strip()
        return cls(digests)

    @property
    def enabled(self) -> bool:
        """Whether any key is configured (then every non-public route needs one)."""
        return bool(self._tenants)

    def authenticate(self, path: str, authorization: str | None) -> Principal:
        """Return who calls ``path`` with this ``Authorization`` header.

        Raises:
            InvalidKey: keys are configured and the header is missing or wrong (401).
        """
        if not self._tenants or path in PUBLIC_PATHS:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidKey("this server needs an API key: Authorization: Bearer <key>")
        # A lookup by digest: comparing digests leaks nothing useful about the key.
        hexd = digest(token.strip())
        tenant = self._tenants.get(hexd)
        if tenant is None:
            raise InvalidKey("the API key is not valid")
        return Principal(tenant, hexd[:12])


class KeyLimits:
    """Per-key request rate (token bucket) and concurrency; one per process, on its loop.

    Args:
        rate: requests per second per key (0: unlimited); the burst is ``ceil(rate)``.
        max_concurrent: requests (streams) in progress per key (0: unlimited).
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, rate: float, max_concurrent: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rate, self._max, self._clock = rate, max_concurrent, clock
        self._burst = max(1.0, math.ceil(rate))
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._active: dict[str, int] = {}

    def acquire(self, principal: Principal) -> Callable[[], None]:
        """Admit one request of ``principal``; return the function that ends it.

        Raises:
            RateLimited: over the key's rate (429, Retry-After).
            Overloaded: the key's concurrent requests are all in use (503, Retry-After).
        """
        key = principal.key_id
        if not key:
            return _noop
        if self._rate > 0:
            now = self._clock()
            tokens, at = self._buckets.get(key, (self._burst, now))
            tokens = min(self._burst, tokens + (now - at) * self._rate)
            if tokens < 1.0:
                raise RateLimited(f"rate limit of {self._rate:g} requests/s for this API key "
                                  "exceeded", retry_after=(1.0 - tokens) / self._rate)
            self._buckets[key] = (tokens - 1.0, now)
        if self._max > 0:
            if self._active.get(key, 0) >= self._max:
                raise Overloaded(f"this API key already has {self._max} requests in "
                                 "progress", retry_after=1)
            self._active[key] = self._active.get(key, 0) + 1
            released = False

            def release() -> None:
                nonlocal released
                if not released:
                    released = True
                    self._active[key] -= 1

            return release
        return _noop


def _noop() -> None:
    pass


def check_bind(host: str, settings: Settings) -> None:
    """Refuse to serve a non-loopback interface when no API key is configured.

    Raises:
        AuthConfigError: naming why, and the two ways out.
    """
    if ApiKeys.from_settings(settings).enabled:
        return
    name = host.strip("[]")
    try:
        loopback = ipaddress.ip_address(name).is_loopback
    except ValueError:
        loopback = name == "localhost"
    if not loopback:
        raise AuthConfigError(
            f"refusing to listen on {host}: no API keys are configured, so anyone who can "
            "reach that address could use this server (and its agents' credentials). "
            "Set STREAMBRIDGE_API_KEYS=tenant:key,... or bind 127.0.0.1")
