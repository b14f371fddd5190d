"""The delivery worker: drains the webhook outbox in the background.

It runs on the loop that runs the streams, but no stream ever waits for it: the
outbox rows were committed with the final transcript, and this task picks them
up. Each due row is leased (so another worker, or another process, skips it;
a worker that dies loses its lease after ``timeout + LEASE_MARGIN``), sent once
with a per-attempt timeout to the address the SSRF guard checked, and settled:

    2xx                      delivered
    410 Gone                 the endpoint is disabled (its pending rows too)
    anything else, timeout   retry after backoff * 2^(n-1) * U(0.5, 1.5), capped,
                             at least Retry-After; after max_attempts: dead
    refused by the guard     dead at once (never retried into internal space)

Delivery is at least once: a crash between send and settle re-sends the row with
the same ``webhook-id``, which receivers use to drop the duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

from .._tasks import cancel_and_wait
from ._config import WebhookConfig
from ._ssrf import UrlRefused, resolve

if TYPE_CHECKING:
    from ..store._store import Store

log = logging.getLogger("streambridge.webhooks")
LEASE_MARGIN = 2.0
IDLE_POLL = 1.0  # other processes' rows and due retries are found at least this often
CONCURRENCY = 8


class DeliveryWorker:
    """Sends outbox rows until closed.

    Args:
        store: the outbox.
        config: endpoints, signing secrets, timeouts and the retry schedule.
        jitter: returns a float in [0, 1) (tests pass a fixed one).
    """

    def __init__(self, store: Store, config: WebhookConfig,
                 jitter: Callable[[], float] = random.random) -> None:
        self._store, self._config, self._jitter = store, config, jitter
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._inflight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        """Start draining the outbox on the running loop."""
        # trust_env=False: no proxy from the environment may bypass the SSRF guard.
        self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sb-webhooks")

    def wake(self) -> None:
        """New rows were committed: look now rather than at the next poll."""
        self._wake.set()

    async def aclose(self, grace: float = 2.0) -> None:
        """Stop claiming; give attempts in flight ``grace`` seconds, then cancel them.

        A cancelled attempt keeps its row pending: it is sent again (same
        ``webhook-id``) once its lease expires, by this server's next start or a peer.
        """
        if self._task is not None:
            await cancel_and_wait(self._task)
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        lease = self._config.timeout + LEASE_MARGIN
        while True:
            try:
                rows = await self._store.claim_due(time.time(), lease)
            except Exception:
                log.exception("reading the webhook outbox failed")
                rows = []
            for row in rows:
                await self._slots.acquire()
                task = asyncio.get_running_loop().create_task(self._attempt(row))
                self._inflight.add(task)
                task.add_done_callback(self._done)
            if rows:
                continue
            await self._idle()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slots.release()

    async def _idle(self) -> None:
        delay = IDLE_POLL
        with contextlib.suppress(Exception):
            due = await self._store.next_due()
            if due is not None:
                delay = min(delay, max(0.0, due - time.time()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()
        self._wake.clear()

    async def _attempt(self, row: dict[str, Any]) -> None:
        msg_id, url, attempts = row["id"], row["url"], row["attempts"] + 1
        try:
            status, error, retry_after = await self._send(row)
        except UrlRefused as e:
            log.warning("webhook %s to %s refused: %s", msg_id, url, e.message)
            await self._store.settle(msg_id, status="dead", attempts=attempts,
                                     last_error=e.message[:500], finished_at=time.time())
            return
        except Exception as e:  # a bug must not kill the worker; the row is retried
            log.exception("webhook %s: unexpected failure", msg_id)
            status, error, retry_after = None, f"internal error: {e!r}", None
        now = time.time()
        if status is not None and 200 <= status < 300:
            await self._store.settle(msg_id, status="delivered", attempts=attempts,
                                     last_error=None, finished_at=now)
        elif status == 410:
            log.warning("webhook endpoint %s answered 410 Gone: disabled", url)
            await self._store.settle(msg_id, status="disabled", attempts=attempts,
                                     last_error="410 Gone", finished_at=now)
            await self._store.disable_endpoint(url, "410 Gone")
        elif attempts >= self._config.max_attempts:
            log.warning("webhook %s to %s dead after %d attempts: %s", msg_id, url,
                        attempts, error)
            await self._store.settle(msg_id, status="dead", attempts=attempts,
                                     last_error=error[:500], finished_at=now)
        else:
            delay = self.backoff(attempts, retry_after)
            await self._store.settle(msg_id, attempts=attempts, last_error=error[:500],
                                     next_attempt_at=now + delay)
            self._wake.set()

    def backoff(self, attempts: int, retry_after: float | None = None) -> float:
        """Seconds before attempt ``attempts + 1``: exponential, jittered, capped."""
        cfg = self._config
        delay = cfg.backoff * 2 ** (attempts - 1) * (0.5 + self._jitter())
        if retry_after is not None:
            delay = max(delay, retry_after)
        return float(min(delay, cfg.backoff_max))

    async def _send(self, row: dict[str, Any]) -> tuple[int | None, str, float | None]:
        assert self._client is not None
        cfg = self._config
        try:
            async with asyncio.timeout(cfg.timeout):
                target = await resolve(row["url"], cfg.allow)
        except TimeoutError:
            return None, f"resolving the host timed out after {cfg.timeout:g} s", None
        payload: str = row["payload"]
        headers = {**cfg.headers(row["id"], payload), "host": target.host_header,
                   "user-agent": "streambridge-webhooks"}
        try:
            async with asyncio.timeout(cfg.timeout):  # the whole attempt, not per read
                response = await self._client.post(
                    target.url, content=payload.encode(), headers=headers,
                    timeout=cfg.timeout, extensions={"sni_hostname": target.sni})
        except (TimeoutError, httpx.TimeoutException):
            return None, f"timed out after {cfg.timeout:g} s", None
        except httpx.HTTPError as e:
            return None, f"{type(e).__name__}: {e}", None
        retry_after = None
        if response.status_code in (429, 503):
            with contextlib.suppress(ValueError):
                retry_after = float(response.headers.get("retry-after", ""))
        return response.status_code, f"HTTP {response.status_code}", retry_after
