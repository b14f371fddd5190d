"""500 WebSockets at once on one async worker (issue 15 item 4).

One ``streambridge serve`` process on the async path; 500 ``websockets`` clients in
one event loop of the test, each starting one paced probe stream. Bounded: the whole
run must end by itself within ``BOUND`` s. ``scripts/bench_ws.py --sockets 500`` gives
the same run's CPU, memory and lag figures.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect

from tests.clients import metric, wait_for
from tests.contract.test_resume import body
from tests.probe_agents import probe_text
from tests.reaper import REAPER
from tests.servers import Server

SOCKETS = 500
TOKENS = 20
BOUND = 30.0  # s for the whole run; measured 2.0 s on the shared 2-core machine


@pytest.fixture(scope="module")
def srv() -> Iterator[Server]:
    """An async server without limits on concurrent streams or a store."""
    server = Server("async", {"STREAMBRIDGE_MAX_STREAMS": "0",
                              "STREAMBRIDGE_DATABASE_URL": "none"})
    yield server
    REAPER.retire(server, __name__)  # waited for, and its log read, at the module's end


async def _one(port: int, gate: asyncio.Semaphore) -> tuple[str, int, int]:
    """One socket, one stream: (its text, how many ``done``, how many errors)."""
    async with gate:
        ws = await connect(f"ws://127.0.0.1:{port}/v1/ws", open_timeout=BOUND)
    text, dones, errors = [], 0, 0
    async with ws:
        await ws.send(json.dumps({"type": "start", **body(TOKENS, 25)}))
        async for raw in ws:
            message = json.loads(raw)
            if message["event"] == "delta":
                text.append(message["data"]["text"])
            elif message["event"] == "done":
                dones += 1
                break
            elif message["event"] == "error":
                errors += 1
                break
        # a second done would follow at once: give it a moment to show up
        try:
            extra = await asyncio.wait_for(ws.recv(), 0.05)
            dones += json.loads(extra)["event"] == "done"
        except TimeoutError:
            pass
    return "".join(text), dones, errors


async def _run(port: int) -> list[tuple[str, int, int]]:
    gate = asyncio.Semaphore(100)  # handshakes in flight at once
    return await asyncio.wait_for(asyncio.gather(*(_one(port, gate) for _ in range(SOCKETS))),
                                  BOUND)


def test_500_sockets_each_get_their_whole_stream_and_exactly_one_done(srv: Server) -> None:
    t0 = time.monotonic()
    results = asyncio.run(_run(srv.port))
    took = time.monotonic() - t0
    print(f"{SOCKETS} sockets x {TOKENS} tokens: {took:.1f} s")
    assert [errors for _, _, errors in results] == [0] * SOCKETS
    assert [dones for _, dones, _ in results] == [1] * SOCKETS
    assert all(text == probe_text(TOKENS) for text, _, _ in results)
    # every stream ended and nothing is left running on the server
    wait_for(lambda: metric(srv.base_url, "streambridge_active_streams") == 0, timeout=5)
