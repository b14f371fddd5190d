"""What an open, idle ``GET /v1/ws`` socket costs the serving process, per path.

For each path: one server (gthread with ``--threads 128``, so that 100 sockets fit),
one socket opened and closed to warm up, then RSS and thread count of the serving
process (gunicorn's worker, or uvicorn) before, with ``N`` idle sockets open (each has
run one 3-token stream, so the session is warm), and after they closed.

    .venv/bin/python docs/websocket/socket_cost.py [N] [--no-compression]

``--no-compression``: the client offers no permessage-deflate (its zlib state is most of
the legacy path's extra cost: simple-websocket keeps zlib's default 15-bit windows).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import psutil
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.servers import Server  # noqa: E402

ARGS = {"legacy-gthread": ["--threads", "128"], "legacy-gevent": [], "async": []}


def _worker(server: Server) -> psutil.Process:
    proc = psutil.Process(server.proc.pid)
    children = proc.children(recursive=True)
    return children[0] if children else proc


def _one_stream(ws: object) -> None:
    ws.send(json.dumps({"type": "start", "agent": "demo", "message": "hi",  # type: ignore[attr-defined]
                        "options": {"tokens": 3, "interval_ms": 0}}))
    while json.loads(ws.recv(timeout=10))["event"] != "done":  # type: ignore[attr-defined]
        pass


def measure(path: str, n: int, compression: str | None = "deflate") -> dict[str, float]:
    server = Server(path, args=ARGS[path])
    url = server.url("/v1/ws").replace("http://", "ws://", 1)
    try:
        worker = _worker(server)
        with connect(url, compression=compression) as ws:
            _one_stream(ws)
        time.sleep(1.0)
        rss0, threads0 = worker.memory_info().rss, worker.num_threads()
        with contextlib.ExitStack() as stack:
            for _ in range(n):
                _one_stream(stack.enter_context(connect(url, open_timeout=30,
                                                        compression=compression)))
            time.sleep(1.0)
            rss1, threads1 = worker.memory_info().rss, worker.num_threads()
        time.sleep(CLOSE_SETTLE)
        rss2, threads2 = worker.memory_info().rss, worker.num_threads()
    finally:
        server.stop()
    return {"rss_before_kib": rss0 / 1024, "rss_open_kib": rss1 / 1024,
            "rss_after_kib": rss2 / 1024, "kib_per_socket": (rss1 - rss0) / 1024 / n,
            "threads_before": threads0, "threads_open": threads1, "threads_after": threads2}


CLOSE_SETTLE = 2.0

if __name__ == "__main__":
    argv = [a for a in sys.argv[1:] if a != "--no-compression"]
    count = int(argv[0]) if argv else 100
    offer = None if "--no-compression" in sys.argv else "deflate"
    for path_id in ARGS:
        figures = measure(path_id, count, offer)
        print(path_id, json.dumps({k: round(v, 1) for k, v in figures.items()}))
