"""The sync producer: code outside the web server publishes a stream into the Redis log.

design: a Celery task, a cron job or any plain sync process (no event loop; redis-py's
sync client) writes one stream exactly as an engine run does: the same keys and Lua
scripts (``_scripts.py``), the same ids (``fence-seq`` in the stream's epoch), a fenced
lease in ``sb:running`` that the sweeper of any server process ends ``interrupted``
when this process dies, the cancel intent, and one terminal entry. Each stream has two
threads besides the caller's:

- the *flusher*: ``delta()`` only adds to a pending list under a lock (consecutive
  deltas coalesce into one entry, as the engine coalesces a batch); the flusher takes
  everything pending, gives it ids and sends it in one pipeline (``APPEND`` plus, at
  the end, ``ZREM sb:running``): one round trip per batch, never one per token. A
  batch that failed (Redis unreachable) is retried whole with the same ids (the script
  skips ids it has), bounded by ``redis_max_buffered`` (then the epoch changes, so
  readers reset instead of seeing a gap).
- the *watcher*: on a connection of its own it blocks in ``XREAD`` on the stream's
  ``ctl`` key (the cancel wake-up) and renews the lease every ``lease_renew`` s; the
  renewal also reports a durable cancel intent, so a lost wake-up costs at most
  ``lease_renew`` s. The terminal flush ends its block with ``CLIENT UNBLOCK``.

So ``cancelled`` is a flag read without a round trip. README.md ("Producers outside
the web server") has the usage and a Celery example; ``_sync_agent.py`` runs a sync
agent generator through a ``PublishedStream``.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

import redis
from redis.exceptions import NoScriptError

from ..auth import DEFAULT_TENANT
from . import _scripts as S
from ._health import Health
from ._ids import new_epoch
from ._mux import LOST
from ._settings import LogSettings
from ._stream import PublishedStream
from .exceptions import LogUnavailable, StreamExists


class Publisher:
    """Publishes streams into the Redis stream log from a sync process.

    Thread-safe: one ``Publisher`` per process, any number of streams at once (each
    has its own flusher and watcher threads). Build it once (e.g. at Celery worker
    start) and ``close()`` it at exit.

    Args:
        settings: the log settings; ``redis_url`` must be set (default: from the
            ``STREAMBRIDGE_*`` environment, as the server reads it).
        owner: this process' id in leases (default: a random one).
        finish_timeout: seconds the end of a stream waits for Redis to store the
            terminal entry before giving up (``LogUnavailable``; the lease then
            expires and a sweeper ends the stream ``interrupted``).

    Raises:
        LogUnavailable: no ``redis_url``, or Redis is unreachable (names the setting).
    """

    def __init__(self, settings: LogSettings | None = None, *, owner: str | None = None,
                 finish_timeout: float = 30.0) -> None:
        self.settings = settings = settings or _env_settings()
        if not settings.redis_url:
            raise LogUnavailable("STREAMBRIDGE_REDIS_URL is not set: the sync publisher "
                                 "needs the Redis stream log")
        self.owner = owner or uuid.uuid4().hex[:12]
        self.finish_timeout = finish_timeout
        self.health = Health()
        self._opts: dict[str, Any] = {
            "socket_timeout": settings.redis_socket_timeout,
            "socket_connect_timeout": min(5.0, settings.redis_socket_timeout),
            "protocol": 2}
        # Replies are bytes (decode_responses off); redis-py types them as unions.
        self.client: Any = redis.Redis.from_url(
            settings.redis_url, client_name=f"sb-{self.owner}-pub", **self._opts)
        self._sha: dict[str, str] = {}
        self.round_trips = 0  # flush pipelines sent (one per batch)
        try:
            self._load_scripts()
        except LOST as exc:
            self.client.close()
            raise LogUnavailable(f"STREAMBRIDGE_REDIS_URL={settings.redis_url} is unreachable "
                                 f"({type(exc).__name__}: {exc})") from None

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> Publisher:
        """Build a publisher for ``url``; ``overrides`` are ``LogSettings`` fields.

        Args:
            url: ``redis://host:port/db``, the server's ``STREAMBRIDGE_REDIS_URL``.
            **overrides: e.g. ``lease_ttl=10.0``; the environment fills the rest.
        """
        return cls(dataclasses.replace(_env_settings(), redis_url=url, **overrides))

    def _load_scripts(self) -> None:
        for name in ("CREATE", "APPEND", "RENEW"):
            self._sha[name] = self.client.script_load(getattr(S, name))

    def stream(self, stream_id: str | None = None, *, tenant: str = DEFAULT_TENANT,
               conversation_id: str = "") -> PublishedStream:
        """Create a running stream owned by this process; use it as a context manager.

        Args:
            stream_id: the stream's id (default: a random one); readers use it with
                ``GET /v1/streams/{id}`` and ``POST /v1/streams/{id}/cancel``.
            tenant: the tenant that may read and cancel it (the server's for its caller;
                ``default`` is every caller of a server without API keys).
            conversation_id: the conversation it belongs to (``done`` carries it).

        Returns:
            The stream: ``delta()``, ``state()``, ``done()``, ``error()``, ``cancelled``.

        Raises:
            StreamExists: the stream already exists (never a second generation).
            LogUnavailable: Redis is unreachable.
        """
        stream_id = stream_id or uuid.uuid4().hex
        k = S.keys(S.check_id(stream_id))
        epoch, ttl_ms = new_epoch(), int(self.settings.lease_ttl * 1000)
        try:
            token = self._create(stream_id, k, tenant, conversation_id, epoch, ttl_ms)
        except LOST as exc:
            raise LogUnavailable(f"STREAMBRIDGE_REDIS_URL={self.settings.redis_url} is "
                                 f"unreachable ({type(exc).__name__}: {exc})") from None
        return PublishedStream(self, stream_id, tenant=tenant, conversation_id=conversation_id,
                               fence=f"{self.owner}:{token}", epoch=epoch, token=token)

    def _create(self, stream_id: str, k: tuple[str, str, str, str], tenant: str, conv: str,
                epoch: str, ttl_ms: int) -> int:
        # One round trip; the sweeper's hint first, so no created stream is ever missing
        # from it (a hint for a stream that exists already is re-checked by the sweep).
        for attempt in (0, 1):
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(S.RUNNING, {stream_id: time.time() * 1000 + ttl_ms})
            pipe.evalsha(self._sha["CREATE"], 4, *k, tenant, conv, epoch, self.owner, ttl_ms)
            _, token = pipe.execute(raise_on_error=False)
            if attempt == 0 and isinstance(token, NoScriptError):
                self._load_scripts()
                continue
            if isinstance(token, Exception):
                raise token
            if not token:
                raise StreamExists(f"stream {stream_id!r} already exists")
            return int(token)
        raise AssertionError("unreachable")

    def eval(self, name: str, keys: tuple[str, ...], *args: Any) -> Any:
        """Run one of ``_scripts``' scripts by name (reloading them after a restart)."""
        try:
            return self.client.evalsha(self._sha[name], len(keys), *keys, *args)
        except NoScriptError:  # Redis restarted: its script cache is empty
            self._load_scripts()
            return self.client.evalsha(self._sha[name], len(keys), *keys, *args)

    def flush(self, stream_id: str, args: list[Any], *, end: bool, unblock: int | None
              ) -> Any:
        """Send one batch of a stream in one round trip; return ``APPEND``'s reply.

        Args:
            stream_id: the stream.
            args: ``_scripts.append_args`` of the batch.
            end: the batch holds the terminal entry (the stream leaves ``sb:running``).
            unblock: the watcher connection's client id to release at the end.
        """
        k = S.keys(stream_id)
        for attempt in (0, 1):
            pipe = self.client.pipeline(transaction=False)
            pipe.evalsha(self._sha["APPEND"], 4, *k, *args)
            if end:
                pipe.zrem(S.RUNNING, stream_id)
                if unblock is not None:
                    pipe.client_unblock(unblock, error=True)
            self.round_trips += 1
            out = pipe.execute(raise_on_error=False)
            for r in out:
                if isinstance(r, LOST):
                    raise r
            if attempt == 0 and isinstance(out[0], NoScriptError):
                self._load_scripts()
                continue
            return out[0]
        return out[0]

    def renew(self, stream_id: str, fence: str) -> int:
        """Renew a lease in one round trip: ``RENEW``'s reply (3: a cancel intent)."""
        ttl_ms = int(self.settings.lease_ttl * 1000)
        k = S.keys(stream_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.evalsha(self._sha["RENEW"], 2, k[2], k[1], fence, ttl_ms)
        pipe.zadd(S.RUNNING, {stream_id: time.time() * 1000 + ttl_ms})
        res, _ = pipe.execute(raise_on_error=False)
        if isinstance(res, NoScriptError):
            res = self.eval("RENEW", (k[2], k[1]), fence, ttl_ms)
        elif isinstance(res, Exception):
            raise res
        return int(res)

    def watcher_client(self) -> Any:
        """A client of one dedicated connection for a stream's blocking ``XREAD``."""
        return redis.Redis.from_url(self.settings.redis_url, single_connection_client=True,
                                    client_name=f"sb-{self.owner}-watch", **self._opts)

    def close(self) -> None:
        """Close the connections (streams still open lose them: end them first)."""
        self.client.close()


def _env_settings() -> LogSettings:
    """The log settings from the ``STREAMBRIDGE_*`` environment, as the server reads them."""
    from .._settings import Settings  # the one settings loader

    return Settings.from_env().log
