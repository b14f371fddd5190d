"""Behaviour that differs between the paths on purpose (docs/DIVERGENCES.md pins here)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

from tests.clients import RawStream, chat_body, wait_for
from tests.probe_agents import read_probe
from tests.servers import Server


def test_how_fast_a_silent_stream_notices_the_client_left(
        make_server: Callable[..., Server], tmp_path: Path) -> None:
    """D2: async learns of a disconnect at once; WSGI at its next write (a heartbeat)."""
    srv = make_server(heartbeat=1.0)
    probe = str(tmp_path / "probe.jsonl")
    client = RawStream(srv.port, "/v1/chat",
                       chat_body("probe", tokens=3, interval_ms=3000, probe_file=probe))
    client.read_until(b"event: delta", 1)
    client.sock.shutdown(socket.SHUT_RDWR)
    left = time.time()
    client.close()
    record = wait_for(lambda: read_probe(probe), timeout=10)[0]
    delay = record["t"] - left
    if srv.path_id.startswith("legacy"):
        # write 1 (heartbeat at 1 s) may still succeed into the dead socket, write 2
        # fails: within two heartbeats; the agent, pausing on its cancel token, stops then
        assert 0.8 <= delay < 2.5
    else:
        assert delay < 0.5
