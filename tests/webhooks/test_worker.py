"""The delivery worker against a real receiver, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from standardwebhooks import Webhook

from async_core import Settings
from async_core.store import Snapshot, Store, create_engine, upgrade
from async_core.webhooks import DeliveryWorker, WebhookConfig
from tests.webhooks.receiver import SECRET, Receiver

pytestmark = pytest.mark.anyio


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver that answers 204."""
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    """A migrated store."""
    engine = create_engine(db_url)
    await upgrade(engine)
    yield Store(engine)
    await engine.dispose()


def config(url: str, **settings: Any) -> WebhookConfig:
    """Webhook settings for tests: loopback allowed, fast retries."""
    base = {"webhook_urls": url, "webhook_secret": SECRET, "webhook_allow": "127.0.0.0/8",
            "webhook_backoff": 0.05, "webhook_backoff_max": 0.2, "webhook_timeout": 2.0}
    cfg = WebhookConfig.from_settings(Settings.from_env({}, **{**base, **settings}))
    assert cfg is not None
    return cfg


async def enqueue(store: Store, url: str, n: int, stream: str = "s") -> list[str]:
    """Commit ``n`` deliveries to ``url`` with a final transcript; return their ids."""
    now = time.time()
    rows = tuple({"id": f"msg_{stream}{i}", "url": url, "event_type": "turn.completed",
                  "payload": json.dumps({"i": i}), "status": "pending", "attempts": 0,
                  "next_attempt_at": now, "lease_until": None, "last_error": None,
                  "created_at": now, "finished_at": None} for i in range(n))
    await store.write([Snapshot(stream_id=stream, conversation_id=f"c-{stream}", tenant="t",
                                agent="demo", messages=(), text="done", tokens=1,
                                outcome="completed", deliveries=rows)])
    return [r["id"] for r in rows]


async def until(predicate: Callable[[], Any], timeout: float = 15.0) -> None:
    """Await (without blocking the loop) until ``predicate()`` is truthy."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def statuses(store: Store) -> dict[str, str]:
    """Delivery id -> status."""
    return {d["id"]: d["status"] for d in await store.deliveries()}


async def settled(store: Store, n: int) -> None:
    """Wait until ``n`` deliveries left the pending state."""
    for _ in range(750):
        if sum(s != "pending" for s in (await statuses(store)).values()) >= n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(await store.deliveries())


async def test_a_delivery_is_signed_and_marked_delivered(store: Store, receiver: Receiver) -> None:
    """One attempt, Standard Webhooks headers that verify, webhook-id = the outbox id."""
    ids = await enqueue(store, receiver.url, 1)
    worker = DeliveryWorker(store, config(receiver.url))
    worker.start()
    try:
        await settled(store, 1)
    finally:
        await worker.aclose()
    (request,) = receiver.requests
    assert Webhook(SECRET).verify(request["body"], request["headers"]) == {"i": 0}
    assert request["headers"]["webhook-id"] == ids[0]
    (row,) = await store.deliveries()
    assert row["status"] == "delivered" and row["attempts"] == 1


async def test_receiver_down_then_back_gets_everything(store: Store, receiver: Receiver) -> None:
    """Every delivery arrives after the receiver returns; duplicates only with the same id."""
    receiver.stop()
    ids = await enqueue(store, receiver.url, 5)
    worker = DeliveryWorker(store, config(receiver.url, webhook_max_attempts=50))
    worker.start()
    try:
        await until(lambda: True, 0)
        await asyncio.sleep(0.6)  # several refused attempts each
        assert receiver.requests == []
        receiver.start()
        await settled(store, 5)
    finally:
        await worker.aclose()
    assert set(await statuses(store)) == set(ids)
    assert set((await statuses(store)).values()) == {"delivered"}
    assert set(receiver.ids()) == set(ids)
    assert max(d["attempts"] for d in await store.deliveries()) > 1


async def test_410_gone_disables_the_endpoint(store: Store) -> None:
    """410: the endpoint is disabled and later turns enqueue nothing for it."""
    gone = Receiver(default=410)
    try:
        await enqueue(store, gone.url, 1, "a")
        worker = DeliveryWorker(store, config(gone.url))
        worker.start()
        try:
            await settled(store, 1)
        finally:
            await worker.aclose()
        await enqueue(store, gone.url, 1, "b")
        assert list((await statuses(store)).values()) == ["disabled"]
        assert len(gone.requests) == 1
    finally:
        gone.stop()


async def test_failures_are_dead_lettered_after_max_attempts(store: Store) -> None:
    """A receiver that keeps answering 500 gets exactly max_attempts attempts, then dead."""
    failing = Receiver(default=500)
    try:
        await enqueue(store, failing.url, 1)
        worker = DeliveryWorker(store, config(failing.url, webhook_max_attempts=3))
        worker.start()
        try:
            await settled(store, 1)
        finally:
            await worker.aclose()
        (row,) = await store.deliveries()
        assert (row["status"], row["attempts"], row["last_error"]) == ("dead", 3, "HTTP 500")
        assert len(failing.requests) == 3
    finally:
        failing.stop()


async def test_redirects_are_not_followed(store: Store, receiver: Receiver) -> None:
    """A 302 counts as a failure; its Location is never requested."""
    redirecting = Receiver(default=302, headers={"Location": receiver.url})
    try:
        await enqueue(store, redirecting.url, 1)
        worker = DeliveryWorker(store, config(redirecting.url, webhook_max_attempts=2))
        worker.start()
        try:
            await settled(store, 1)
        finally:
            await worker.aclose()
        assert receiver.requests == [] and len(redirecting.requests) == 2
    finally:
        redirecting.stop()


async def test_each_attempt_has_a_timeout(store: Store) -> None:
    """A receiver slower than the per-attempt timeout: the attempt fails, promptly."""
    slow = Receiver(delay=2.0)
    try:
        await enqueue(store, slow.url, 1)
        worker = DeliveryWorker(store, config(slow.url, webhook_timeout=0.3,
                                              webhook_max_attempts=1))
        worker.start()
        started = time.monotonic()
        try:
            await settled(store, 1)
        finally:
            await worker.aclose()
        assert time.monotonic() - started < 1.8
        (row,) = await store.deliveries()
        assert row["status"] == "dead" and "timed out" in row["last_error"]
    finally:
        slow.stop()


async def test_deliveries_survive_a_restart(store: Store, receiver: Receiver) -> None:
    """Pending rows left by a stopped worker are sent by the next one (same ids)."""
    receiver.stop()
    ids = await enqueue(store, receiver.url, 3)
    first = DeliveryWorker(store, config(receiver.url, webhook_max_attempts=50))
    first.start()
    await asyncio.sleep(0.3)
    await first.aclose()
    receiver.start()
    second = DeliveryWorker(store, config(receiver.url, webhook_max_attempts=50))
    second.start()
    try:
        await settled(store, 3)
    finally:
        await second.aclose()
    assert sorted(receiver.ids()) == sorted(ids)


async def test_urls_refused_at_send_time_are_dead_lettered(store: Store,
                                                          receiver: Receiver) -> None:
    """A name resolving to loopback, not allowlisted: the receiver is never contacted."""
    url = receiver.url.replace("127.0.0.1", "localhost")
    await enqueue(store, url, 1)
    worker = DeliveryWorker(store, config(url, webhook_allow="10.9.9.0/24"))
    worker.start()
    try:
        await settled(store, 1)
    finally:
        await worker.aclose()
    (row,) = await store.deliveries()
    assert row["status"] == "dead" and "loopback" in row["last_error"]
    assert receiver.requests == []


def test_backoff_is_exponential_jittered_and_capped() -> None:
    """delay(n) = base * 2^(n-1) * (0.5 + jitter), at least Retry-After, at most the cap."""
    cfg = config("http://127.0.0.1:9/h", webhook_backoff=1.0, webhook_backoff_max=10.0)
    worker = DeliveryWorker(None, cfg, jitter=lambda: 0.5)  # type: ignore[arg-type]
    assert [worker.backoff(n) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0, 10.0]
    assert worker.backoff(1, retry_after=7.0) == 7.0
    low = DeliveryWorker(None, cfg, jitter=lambda: 0.0)  # type: ignore[arg-type]
    assert low.backoff(3) == 2.0
