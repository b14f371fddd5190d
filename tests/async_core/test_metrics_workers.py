"""``streambridge serve --path async --workers 2``: /metrics sums every worker."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from pathlib import Path

from tests.clients import RawStream, chat_body, metric, stream, wait_for
from tests.probe_agents import read_probe
from tests.servers import Server

N = 10


def _fresh_metric(srv: Server, name: str, **labels: str) -> float:
    # metric() opens a new connection each call: each may land on either worker.
    return metric(srv.base_url, name, **labels)


def test_metrics_sum_the_streams_of_both_workers() -> None:
    """N concurrent streams spread over 2 workers; /metrics from any connection reports N."""
    probe = os.path.join(tempfile.mkdtemp(prefix="sb-probe-"), "probe.jsonl")
    srv = Server("async", args=["--workers", "2"])
    try:
        results: list[int] = []

        def one() -> None:
            got = stream(srv.url("/v1/chat"), chat_body(
                "probe-async", tokens=20, interval_ms=25, probe_file=probe),
                headers={"connection": "close"})
            results.append(got.kinds().count("done"))

        # The kernel decides which worker accepts: on a loaded machine one worker may
        # take a whole round, so rounds go on (at most 5) until both workers served some.
        for _ in range(5):
            threads = [threading.Thread(target=one) for _ in range(N)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            pids = {r["pid"] for r in read_probe(probe)}
            if len(pids) == 2:
                break
        assert results == [1] * len(results)
        assert len(pids) == 2, f"the streams did not spread over both workers: {pids}"
        for _ in range(6):
            assert _fresh_metric(srv, "streambridge_streams_total", outcome="completed",
                                 agent="probe-async") == len(results)
            assert _fresh_metric(srv, "streambridge_active_streams") == 0
    finally:
        srv.stop()
    assert not srv.problems(), srv.problems()


def test_a_killed_workers_running_streams_stop_counting_as_active() -> None:
    """SIGKILL the worker of a running stream: its live gauge leaves the sum."""
    probe = os.path.join(tempfile.mkdtemp(prefix="sb-probe-"), "probe.jsonl")
    srv = Server("async", args=["--workers", "2"])
    try:
        raw = RawStream(srv.port, "/v1/chat", chat_body("probe-async", tokens=100000,
                                                        interval_ms=20, probe_file=probe))
        raw.read_until(b"event: delta", 1)
        wait_for(lambda: _fresh_metric(srv, "streambridge_active_streams") == 1)
        workers = [line.split("[")[1].split("]")[0] for line in srv.log().splitlines()
                   if "Started server process" in line]
        assert len(workers) == 2
        for pid in workers:  # the worker that holds the stream is the one with the socket
            if _holds_connection(int(pid), raw):
                os.kill(int(pid), signal.SIGKILL)
                break
        else:
            raise AssertionError("no worker holds the stream's connection")
        raw.close()
        wait_for(lambda: _fresh_metric(srv, "streambridge_active_streams") == 0, timeout=10)
    finally:
        srv.stop()


def _holds_connection(pid: int, raw: RawStream) -> bool:
    """True when process ``pid`` has the server side of ``raw``'s TCP connection."""
    local_port = raw.sock.getsockname()[1]
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == local_port and fields[9] in inodes:
            return True
    return False


