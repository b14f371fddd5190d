"""A stalled reader pauses the agent: memory stays bounded, nothing piles up."""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from tests.clients import RawStream, chat_body, wait_for
from tests.probe_agents import read_probe
from tests.servers import Server


def _rss(server: Server) -> int:
    proc = psutil.Process(server.proc.pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


def test_stalled_reader_keeps_memory_bounded_and_pauses_the_agent(
        server: Server, tmp_path: Path) -> None:
    """An agent that would produce 100,000 tokens of 1 KB is paused, not buffered."""
    probe = str(tmp_path / "probe.jsonl")
    before = _rss(server)
    client = RawStream(server.port, "/v1/chat",
                       chat_body("probe", tokens=100_000, interval_ms=0, pad=1000,
                                 probe_file=probe), rcvbuf=8192)
    client.read_until(b"event: delta", 1)
    samples = []
    for _ in range(10):  # two seconds of a reader that reads nothing more
        time.sleep(0.2)
        samples.append(_rss(server))
    grown = max(samples) - before
    assert grown < 30 * 1024 * 1024, f"server grew {grown} bytes for a stalled reader"
    assert max(samples) - min(samples[3:]) < 5 * 1024 * 1024, "memory still climbing"
    client.close()
    record = wait_for(lambda: read_probe(probe), timeout=10)[0]
    assert record["produced"] < 20_000, "the agent was not paused by backpressure"
