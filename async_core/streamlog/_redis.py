"""The ``redis`` backend: Redis Streams shared by every worker and host.

Appends are synchronous (the id is chosen here, ``fence-seq``; the entry goes into the
stream's local buffer, which local readers follow, and into a pending list); one writer
task flushes every dirty stream in one round trip on its own connection, without waiting
for the batches in flight (``_window.py``, at most ``WINDOW``), and keeps the pending
entries while Redis is unreachable. Reads of a stream owned elsewhere are in
``_remote.py``; the one blocking reader is ``_mux.py``; the connections, and their
retirement when an outage begins, ``_connections.py``; the scripts and keys are
``_scripts.py``. README.md in this folder has the whole design.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from redis.exceptions import NoScriptError

from . import _scripts as S
from ._batch import Batch, Owned, Sent, acked, failed, fill, take
from ._connections import Connections
from ._health import Health
from ._ids import EventId, new_epoch
from ._mux import LOST
from ._remote import Remote, replay_and_follow, to_entry
from ._renewal import renew_leases, sweep_expired
from ._settings import LogSettings
from ._types import TERMINAL_EVENTS, CancelResult, Lease, ReadItem, StreamMeta
from ._window import WINDOW
from .exceptions import LogUnavailable, StaleOwner, StreamClosed, StreamExists, StreamNotFound

_check_id = S.check_id
_compact = json.JSONEncoder(separators=(",", ":")).encode  # built once, not per append


class RedisLog:
    """The Redis Streams stream log (see the module docstring); build it with ``open``.

    Args:
        settings: the log settings (``redis_url`` must be set).
        owner: this process' id in leases (default: a random one).
        sweeper: whether this process sweeps expired leases.
        heartbeat: whether this process renews its leases (off: a frozen owner).
    """

    def __init__(self, settings: LogSettings, *, owner: str | None = None,
                 sweeper: bool = True, heartbeat: bool = True) -> None:
        self.settings = settings
        self.owner = owner or uuid.uuid4().hex[:12]
        self.health = Health()
        self.connections = Connections(settings, self.owner, on_lost=self.health.degrade,
                                       on_reconnect=self._reconnected)
        self.health.on_outage = self.connections.retire  # one outage retires them all
        self.client: Any = self.connections.client
        self.window, self.mux = self.connections.window, self.connections.mux
        self._slots = asyncio.Semaphore(WINDOW)
        self._inflight: asyncio.Queue[tuple[Batch, Any, float]] = asyncio.Queue()
        self._retry_at = 0.0  # monotonic time before which the writer does not send
        self.in_flight = self.peak_in_flight = 0  # batches sent, reply not yet applied
        self._sha = {name: "" for name in ("CREATE", "APPEND", "APPEND_MANY", "RENEW",
                                           "SWEEP", "CANCEL", "OPEN")}
        # One APPEND_MANY call a flush on a single Redis; one APPEND a stream on a Cluster.
        self.one_call_per_flush = True
        self._owned: dict[str, Owned] = {}
        self._dirty: dict[str, Owned] = {}
        self._remote: dict[str, Remote] = {}
        self._wake = asyncio.Event()
        self._sweeper = sweeper
        self._renewing = heartbeat
        self._tasks: list[asyncio.Task[None]] = []
        self.on_swept: Callable[[list[str]], None] | None = None
        self.flushes = 0  # pipelines sent by the writer (round trips)
        self.flush_seconds = 0.0  # their total duration, send to reply (the benchmark's)

    @classmethod
    async def open(cls, settings: LogSettings, **kw: Any) -> RedisLog:
        """Connect, load the scripts and start the writer and heartbeat tasks.

        Raises:
            LogUnavailable: Redis cannot be reached (the message names the setting).
        """
        self = cls(settings, **kw)
        try:
            await self._load_scripts()
            cluster = await self.client.info("cluster")
            self.one_call_per_flush = not int(cluster.get("cluster_enabled", 0))
        except LOST as exc:
            await self.client.aclose(close_connection_pool=True)
            raise LogUnavailable(f"STREAMBRIDGE_REDIS_URL={settings.redis_url} is unreachable "
                                 f"({type(exc).__name__}: {exc})") from None
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._writer()), loop.create_task(self._acker()),
                       loop.create_task(self._heartbeat())]
        return self

    async def _load_scripts(self) -> None:
        for name in self._sha:
            self._sha[name] = await self.client.script_load(getattr(S, name))

    async def eval_script(self, name: str, keys: tuple[str, ...], *args: Any) -> Any:
        """Run one of ``_scripts``' scripts by name (reloading them after a restart)."""
        try:
            return await self.client.evalsha(self._sha[name], len(keys), *keys, *args)
        except NoScriptError:  # Redis restarted: its script cache is empty
            await self._load_scripts()
            return await self.client.evalsha(self._sha[name], len(keys), *keys, *args)

    # -- producer side -------------------------------------------------------------
    async def create(self, stream_id: str, *, tenant: str, conversation_id: str) -> Lease:
        """Create a running stream owned by this process; see ``StreamLog.create``."""
        k = S.keys(_check_id(stream_id))
        epoch, ttl_ms = new_epoch(), int(self.settings.lease_ttl * 1000)
        token = await self.eval_script("CREATE", k, tenant, conversation_id, epoch, self.owner,
                                 ttl_ms)
        if not token:
            raise StreamExists(f"stream {stream_id!r} already exists")
        await self.client.zadd(S.RUNNING, {stream_id: time.time() * 1000 + ttl_ms})
        lease = Lease(stream_id, self.owner, int(token))
        self._owned[stream_id] = Owned(lease, tenant, conversation_id, epoch,
                                        self.settings.log_maxlen)
        self.mux.follow(k[3].encode(), b"0-0", lambda _entries: lease.cancelled.set())
        return lease

    def _add(self, lease: Lease, event: str, data: Mapping[str, Any]) -> EventId:
        st = self._owned.get(lease.stream_id)
        if st is None or st.lease is not lease or lease.lost:
            raise StaleOwner(f"lease {lease.fence} on {lease.stream_id!r} is not current")
        if st.terminal:
            raise StreamClosed(f"stream {lease.stream_id!r} has ended")
        st.seq += 1
        eid = EventId.made(st.buffer.epoch, lease.token, st.seq)
        st.buffer.add(to_entry(eid, event, data))
        st.pending.append((eid.native, event, _compact(data)))
        if event in TERMINAL_EVENTS:
            st.terminal = "done" if event == "done" else "error"
        self._dirty[lease.stream_id] = st
        self._wake.set()
        return eid

    def append(self, lease: Lease, event: str, data: Mapping[str, Any]) -> EventId:
        """Append a non-terminal event (never waits); see ``StreamLog.append``."""
        if event in TERMINAL_EVENTS:
            raise ValueError("use finish() for the terminal entry")
        return self._add(lease, event, data)

    async def finish(self, lease: Lease, event: str, data: Mapping[str, Any]) -> EventId:
        """Append the terminal entry and wait until Redis has it (or the lease is refused).

        While Redis is unreachable this waits for it (the local readers already have
        the entry); bound it with a timeout where that matters.
        """
        if event not in TERMINAL_EVENTS:
            raise ValueError(f"terminal event must be one of {sorted(TERMINAL_EVENTS)}")
        eid = self._add(lease, event, data)
        st = self._owned[lease.stream_id]
        st.done = asyncio.get_running_loop().create_future()
        await asyncio.shield(st.done)
        return eid

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._slots.acquire()  # released by the acker once the reply is read
            delay = self._retry_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            batch = take(self._dirty, self.settings.redis_max_buffered)
            if not batch:
                self._slots.release()
                continue
            cmds = fill(batch, self.settings, self._sha, one_call=self.one_call_per_flush,
                        epoch=new_epoch())  # for any stream whose log must be recreated
            self.flushes += 1
            t0 = time.perf_counter()
            try:
                fut = await self.window.send(cmds)
            except LOST as exc:
                self._slots.release()
                self._failed(batch, exc, t0)
                continue
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            self._inflight.put_nowait((batch, fut, t0))

    async def _acker(self) -> None:  # the replies, in the order the batches were sent
        while True:
            batch, fut, t0 = await self._inflight.get()
            try:
                out = await fut
                self.flush_seconds += time.perf_counter() - t0
                if any(isinstance(r, NoScriptError) for r in out):
                    await self._load_scripts()  # Redis restarted: load, then resend
                    self._failed(batch, None, t0)
                    continue
            except LOST as exc:
                self._failed(batch, exc, t0)
                continue
            finally:
                self.in_flight -= 1
                self._slots.release()
            self.health.recover()
            if self.one_call_per_flush:
                results = list(out[0]) if isinstance(out[0], list) else [out[0]] * len(batch)
            else:
                results = list(out[:len(batch)])
            for (st, sent, force), res in zip(batch, results, strict=True):
                self._flushed(st, sent, force, res)

    def _failed(self, batch: Batch, exc: BaseException | None, sent_at: float) -> None:
        """A batch was not stored: resend all pending, in order (a batch sent before the
        last recovery was lost in the outage already logged: no second warning)."""
        if exc is not None:
            self.health.degrade(exc, sent_at)
            self._retry_at = time.monotonic() + self.settings.redis_retry
        for st, _, force in batch:
            if self._owned.get(st.lease.stream_id) is st:
                failed(st, force)
                self._dirty[st.lease.stream_id] = st
        self._wake.set()

    def _flushed(self, st: Owned, sent: Sent, force: bool, res: Any) -> None:
        sid = st.lease.stream_id
        if self._owned.get(sid) is not st:
            return  # dropped by an earlier reply (refused, or ended)
        if not isinstance(res, Exception) and res[0] == b"gap":
            self._failed([(st, sent, force)], None, 0.0)  # an earlier batch failed: resend
            return
        if isinstance(res, Exception) or res[0] == b"stale":
            st.lease.lost = True
            st.lease.cancelled.set()
            st.pending.clear()
            self._drop(sid, StaleOwner(f"Redis refused the appends of {st.lease.fence}: "
                                       f"{res!r}"))
            return
        acked(st, sent)
        epoch = res[1].decode()
        if epoch != st.buffer.epoch:
            st.buffer.epoch = epoch  # the log was recreated: new ids carry the new epoch
        if len(st.pending) > st.sent:
            self._dirty[sid] = st
            self._wake.set()
        elif st.terminal and not st.pending:
            self._drop(sid, None)

    def _drop(self, stream_id: str, error: BaseException | None) -> None:
        st = self._owned.pop(stream_id, None)
        self.mux.unfollow(S.keys(stream_id)[3].encode())
        if st is not None and st.done is not None and not st.done.done():
            if error is None:
                st.done.set_result(None)
            else:
                st.done.set_exception(error)

    async def renew(self, lease: Lease) -> bool:
        """Extend the lease; see ``StreamLog.renew``."""
        ttl_ms = int(self.settings.lease_ttl * 1000)
        res = await self.eval_script("RENEW", S.keys(lease.stream_id)[2:0:-1], lease.fence, ttl_ms)
        await self.client.zadd(S.RUNNING, {lease.stream_id: time.time() * 1000 + ttl_ms})
        return self._renewed(lease, int(res))

    async def _renew_all(self) -> bool:
        """Renew every running owned lease in one round trip; whether there were any."""
        leases = [st.lease for st in self._owned.values() if not st.terminal]
        if not leases:
            return False
        out = await renew_leases(self.client, self._sha, leases,
                                 int(self.settings.lease_ttl * 1000), self._load_scripts)
        for lease, res in zip(leases, out, strict=False):
            if isinstance(res, int):
                self._renewed(lease, res)
        return True

    def _renewed(self, lease: Lease, res: int) -> bool:
        if res == 3:
            lease.cancelled.set()
        if res == 0 and lease.stream_id in self._owned:
            lease.lost = True
            lease.cancelled.set()
            self._drop(lease.stream_id, StaleOwner(f"lease {lease.fence} expired"))
        return res != 0

    async def _heartbeat(self) -> None:
        s = self.settings
        next_sweep = time.monotonic() + s.sweep_interval
        while True:
            await asyncio.sleep(s.lease_renew)
            started = time.perf_counter()
            try:
                reached = await self._renew_all() if self._renewing else False
                if self._sweeper and time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + s.sweep_interval
                    await self.sweep()
                    reached = True
            except LOST as exc:  # on a pooled connection from before a recovery, too
                self.health.degrade(exc, started)
            else:
                if reached:  # an idle process has no flush to say that Redis is back
                    self.health.recover()

    # -- reader side -----------------------------------------------------------------
    async def read(self, stream_id: str, cursor: EventId | None, *,
                   tenant: str | None = None) -> AsyncIterator[ReadItem]:
        """Replay then follow; see ``StreamLog.read`` (raises on the first iteration)."""
        st = self._owned.get(stream_id)
        if st is not None:
            if tenant is not None and tenant != st.tenant:
                raise StreamNotFound(f"no stream {stream_id!r}")
            async for item in st.buffer.read(cursor):
                yield item
            return
        async for item in replay_and_follow(self, S.keys(_check_id(stream_id)), stream_id,
                                            cursor, tenant):
            yield item

    async def xrange_after(self, stream_id: str, after: bytes,
                           upto: bytes) -> list[tuple[bytes, list[bytes]]]:
        """Entries in ``(after, upto]`` of a stream's log (a follower's catch-up)."""
        return list(await self.client.xrange(S.keys(stream_id)[0], b"(" + after, upto))

    def remote(self, stream_id: str, epoch: str) -> Remote:
        """The followers of a remotely owned stream in this process (made on first use)."""
        remote = self._remote.get(stream_id)
        if remote is None:
            remote = self._remote[stream_id] = Remote(stream_id, epoch, self)
        return remote

    def forget_remote(self, stream_id: str) -> None:
        """Called by a ``Remote`` when its last follower left."""
        self._remote.pop(stream_id, None)

    async def _reconnected(self) -> None:
        """After the reader lost Redis: reset followers of logs that were recreated."""
        self.health.recover()
        if not self._remote:
            return
        pipe = self.client.pipeline(transaction=False)
        remotes = list(self._remote.values())
        for r in remotes:
            pipe.hget(S.keys(r.stream_id)[1], "epoch")
        for r, epoch in zip(remotes, await pipe.execute(), strict=True):
            r.check_epoch(epoch.decode() if epoch else None)

    async def meta(self, stream_id: str) -> StreamMeta | None:
        """Return the stream's metadata; see ``StreamLog.meta``."""
        m = await self.client.hmget(S.keys(_check_id(stream_id))[1],
                                    ["tenant", "conv", "status", "epoch", "cancel"])
        if m[3] is None:
            return None
        t, c, status, epoch, cancel = (v.decode() if v else "" for v in m)
        return StreamMeta(stream_id, t, c, status, epoch, cancel == "1")  # type: ignore[arg-type]

    async def request_cancel(self, stream_id: str) -> CancelResult:
        """Record a durable cancel intent plus a wake-up; see ``StreamLog.request_cancel``."""
        k = S.keys(_check_id(stream_id))
        status, recorded = await self.eval_script("CANCEL", (k[1], k[3]))
        if status == b"missing":
            raise StreamNotFound(f"no stream {stream_id!r}")
        return CancelResult(status.decode(), bool(recorded))

    async def sweep(self) -> list[str]:
        """End running streams whose lease expired; see ``StreamLog.sweep``."""
        ended = await sweep_expired(self.client, self.eval_script, self.settings)
        if ended and self.on_swept is not None:
            self.on_swept(ended)
        return ended

    async def aclose(self) -> None:
        """Flush what Redis can take now, stop the tasks, close the connections."""
        if not self.health.degraded:
            deadline = time.monotonic() + self.settings.redis_socket_timeout
            while ((self._dirty or any(st.sent for st in self._owned.values()))
                   and time.monotonic() < deadline and not self.health.degraded):
                self._wake.set()
                await asyncio.sleep(0.005)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks = []
        await self.connections.aclose()
