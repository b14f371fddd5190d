#!/usr/bin/env python
"""Webhook retries: the model, a simulation of it, and the real delivery worker.

If each attempt succeeds independently with probability p and a delivery gets at
most r retries (r + 1 attempts), it succeeds with probability 1 - (1 - p)^(r+1),
and the expected number of attempts is E[A] = (1 - (1 - p)^(r+1)) / p, which is
at most min(r + 1, 1/p). Part one checks both by Monte Carlo; part two runs the
real ``DeliveryWorker`` (SQLite outbox, Standard Webhooks signing, backoff)
against a real HTTP receiver that fails each request with probability 1 - p.

Usage: scripts/streaming_webhook_sim.py [--p 0.6] [--retries 3] [--deliveries 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def theory(p: float, r: int) -> tuple[float, float, float]:
    """(success probability, expected attempts, the min(r+1, 1/p) bound)."""
    success = 1 - (1 - p) ** (r + 1)
    return success, success / p, min(r + 1, 1 / p)


def simulate(p: float, r: int, trials: int, rng: random.Random) -> tuple[float, float]:
    """Monte Carlo: (success fraction, mean attempts) over ``trials`` deliveries."""
    ok = attempts = 0
    for _ in range(trials):
        for n in range(1, r + 2):
            if rng.random() < p:
                ok += 1
                attempts += n
                break
        else:
            attempts += r + 1
    return ok / trials, attempts / trials


def check(name: str, measured: float, expected: float, sigma: float) -> bool:
    """Print one comparison; within 4 sigma counts as agreeing."""
    agree = abs(measured - expected) <= 4 * sigma + 1e-12
    print(f"  {name:<22} measured {measured:8.4f}   theory {expected:8.4f}   "
          f"{'ok' if agree else 'DISAGREES'} (4σ = {4 * sigma:.4f})")
    return agree


async def real_worker(p: float, r: int, n: int, rng: random.Random) -> tuple[float, float, int]:
    """Run the delivery worker on ``n`` deliveries; return (delivered, mean attempts, dupes)."""
    from async_core import Settings
    from async_core.harness import WEBHOOK_SECRET, WebhookReceiver
    from async_core.store import Snapshot, Store, create_engine, upgrade
    from async_core.webhooks import DeliveryWorker, WebhookConfig

    statuses = [204 if rng.random() < p else 500 for _ in range(n * (r + 1))]
    receiver = WebhookReceiver(statuses=statuses)
    engine = create_engine(f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/sim.sqlite3")
    try:
        await upgrade(engine)
        store = Store(engine)
        cfg = WebhookConfig.from_settings(Settings.from_env(
            {}, webhook_urls=receiver.url, webhook_secret=WEBHOOK_SECRET,
            webhook_allow="127.0.0.0/8", webhook_backoff=0.005, webhook_backoff_max=0.02,
            webhook_max_attempts=r + 1, webhook_timeout=5))
        assert cfg is not None
        now = time.time()
        rows = tuple({"id": f"msg_sim{i}", "url": receiver.url, "event_type": "turn.completed",
                      "payload": json.dumps({"i": i}), "status": "pending", "attempts": 0,
                      "next_attempt_at": now, "lease_until": None, "last_error": None,
                      "created_at": now, "finished_at": None} for i in range(n))
        await store.write([Snapshot(stream_id="sim", conversation_id="sim", tenant="sim",
                                    agent="sim", messages=(), text="", tokens=0,
                                    outcome="completed", deliveries=rows)])
        worker = DeliveryWorker(store, cfg)
        worker.start()
        try:
            # The outbox is the source of truth: poll it until nothing is pending.
            while any(d["status"] == "pending" for d in await store.deliveries()):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        finally:
            await worker.aclose()
        done = await store.deliveries()
    finally:
        await engine.dispose()
        receiver.stop()
    delivered = sum(d["status"] == "delivered" for d in done) / n
    attempts = sum(d["attempts"] for d in done) / n
    ids = receiver.ids()
    return delivered, attempts, len(ids) - len(set(ids))  # repeats: retries of the same id


def main() -> int:
    """Model, simulation, real worker; exit 1 if any comparison disagrees."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--p", type=float, default=0.6, help="success probability per attempt")
    parser.add_argument("--retries", type=int, default=3, help="retries after the first attempt")
    parser.add_argument("--trials", type=int, default=200_000, help="Monte Carlo deliveries")
    parser.add_argument("--deliveries", type=int, default=200, help="real worker deliveries")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the worker logs every dead letter
    p, r, rng = args.p, args.retries, random.Random(args.seed)
    success, expected, bound = theory(p, r)
    print(f"model: p={p:g}, r={r}: P(success) = 1-(1-p)^(r+1) = {success:.4f}; "
          f"E[attempts] = {expected:.4f} <= min(r+1, 1/p) = {bound:.4f}")
    ok = expected <= bound + 1e-12
    sim_success, sim_attempts = simulate(p, r, args.trials, rng)
    var_attempts = sum((min(k, r + 1) ** 2) * (p * (1 - p) ** (k - 1) if k <= r + 1 else 0)
                       for k in range(1, r + 2)) + (r + 1) ** 2 * (1 - p) ** (r + 1) \
        - expected ** 2
    print(f"simulation ({args.trials} deliveries):")
    ok &= check("P(success)", sim_success, success,
                math.sqrt(success * (1 - success) / args.trials))
    ok &= check("mean attempts", sim_attempts, expected, math.sqrt(var_attempts / args.trials))
    n = args.deliveries
    delivered, attempts, dupes = asyncio.run(real_worker(p, r, n, rng))
    print(f"real DeliveryWorker against a receiver failing with probability {1 - p:g} "
          f"({n} deliveries, max {r + 1} attempts):")
    ok &= check("delivered fraction", delivered, success, math.sqrt(success * (1 - success) / n))
    ok &= check("mean attempts", attempts, expected, math.sqrt(var_attempts / n))
    print(f"  requests carrying an already-seen webhook-id (retries, same id): {dupes}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
