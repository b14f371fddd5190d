"""One gevent worker holds 500 concurrent streams, and clients leaving mid-stream stop theirs."""

from __future__ import annotations

import asyncio
import json
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients import wait_for
from tests.probe_agents import probe_text, read_probe
from tests.servers import Server

STREAMS, LEAVERS, TOKENS = 500, 50, 40


@pytest.fixture(scope="module")
def gevent_server() -> Iterator[Server]:
    """A legacy server with ONE gevent worker and room for the load."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    srv = Server("legacy-gevent", {"STREAMBRIDGE_MAX_STREAMS": "2000",
                                   "STREAMBRIDGE_WORKER_CONNECTIONS": "2000"})
    yield srv
    srv.stop()
    assert not srv.problems(), srv.problems()


async def _stream(port: int, body: dict[str, object], leave_after: int | None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(body).encode()
    writer.write(b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
    data = b""
    try:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return data
            data += chunk
            if leave_after is not None and data.count(b"event: delta") >= leave_after:
                return data
    finally:
        writer.close()


def test_one_gevent_worker_serves_500_concurrent_streams(gevent_server: Server,
                                                         tmp_path: Path) -> None:
    """All 500 streams complete in order; 50 that leave after 5 deltas stop their agents."""
    probe = str(tmp_path / "probe.jsonl")

    async def main() -> list[bytes]:
        jobs = []
        for i in range(STREAMS):
            leaver = i < LEAVERS
            body = {"agent": "probe", "messages": [{"role": "user", "content": "x"}],
                    "options": {"tokens": 1000 if leaver else TOKENS, "interval_ms": 25,
                                "probe_file": probe if leaver else None}}
            jobs.append(_stream(gevent_server.port, body, 5 if leaver else None))
        return await asyncio.wait_for(asyncio.gather(*jobs), timeout=120)

    results = asyncio.run(main())
    expected = probe_text(TOKENS)
    for raw in results[LEAVERS:]:
        text = "".join(json.loads(line[6:])["text"] for line in raw.decode().split("\n")
                       if line.startswith("data: {\"text\""))
        assert text == expected
        assert raw.count(b"event: done") == 1
    records = wait_for(lambda: len(read_probe(probe)) == LEAVERS and read_probe(probe),
                       timeout=15)
    assert all(r["produced"] < 1000 for r in records)
