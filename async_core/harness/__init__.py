"""One harness for servers and clients: the tests, the benchmarks and ``streambridge compare``.

Everything runs on 127.0.0.1 on ephemeral ports, is found ready by polling (never by
sleeping) and is stopped by its own PID.

| module | one idea |
|---|---|
| ``_paths.py`` | the one table of path ids (``PATHS``) and the ``serve`` command of each |
| ``_process.py`` | ``ServerProcess``: any server subprocess, its port, readiness, log, stop |
| ``_measure.py`` | ``ProcessTree`` (CPU, RSS of a server and its workers), ``percentile`` |
| ``_client.py`` | raw asyncio stream clients for benchmarks: TTFC and per-token lag |
| ``_events.py`` | the event-level httpx client ``compare`` measures with (SSE or NDJSON) |
| ``_raw.py`` | a blocking raw HTTP/1.1 client that can stop reading mid-stream |
| ``_redis.py``, ``_receiver.py`` | peers: a private ``redis-server``, a webhook receiver |

Test-only parts (pytest fixtures, the shared server pool, the hybrid-50 pin) stay in
``tests/`` and build on this; nothing here imports from ``tests``.
"""

from __future__ import annotations

from ._client import (
    END_OF_BODY,
    TIMESTAMP,
    LeavingClient,
    StreamClient,
    chat_request,
    http_request,
    open_streams,
    wait_all,
)
from ._events import Cost, Reader, StreamSample, read_stream, run_batch
from ._measure import ProcessTree, percentile, summary, thread_switches
from ._paths import CONTRACT_PATHS, LOOP_PATHS, PATHS, PathSpec, serve_command
from ._process import (
    HOST,
    LISTEN,
    ServerProcess,
    free_port,
    http_ok,
    wait_healthy,
    wait_until,
)
from ._raw import RawStream
from ._receiver import WEBHOOK_SECRET, WebhookReceiver
from ._redis import RedisServer

__all__ = [
    "CONTRACT_PATHS",
    "Cost",
    "END_OF_BODY",
    "HOST",
    "LISTEN",
    "LOOP_PATHS",
    "LeavingClient",
    "PATHS",
    "PathSpec",
    "ProcessTree",
    "RawStream",
    "Reader",
    "RedisServer",
    "ServerProcess",
    "StreamClient",
    "StreamSample",
    "TIMESTAMP",
    "WEBHOOK_SECRET",
    "WebhookReceiver",
    "chat_request",
    "free_port",
    "http_ok",
    "http_request",
    "open_streams",
    "percentile",
    "read_stream",
    "run_batch",
    "serve_command",
    "summary",
    "thread_switches",
    "wait_all",
    "wait_healthy",
    "wait_until",
]
