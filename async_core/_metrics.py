"""Prometheus metrics, the same names and labels on every path.

With several worker processes (gunicorn, ``uvicorn --workers``) set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before start; ``/metrics``
then aggregates every worker (``render`` picks the collector).
"""

from __future__ import annotations

import os
import re
import struct
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from ._records import StreamRecord

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_DURATION = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

ACTIVE_STREAMS = Gauge("streambridge_active_streams", "Streams running now.",
                       ["path"], multiprocess_mode="livesum")
STREAMS_TOTAL = Counter("streambridge_streams_total", "Streams ended, by outcome.",
                        ["outcome", "path", "agent", "format"])
TTFC = Histogram("streambridge_time_to_first_chunk_seconds",
                 "Time from admission to the agent's first delta.",
                 ["path", "agent", "format"], buckets=_LATENCY)
DURATION = Histogram("streambridge_stream_duration_seconds", "Stream duration.",
                     ["path", "agent", "format", "outcome"], buckets=_DURATION)
CHUNKS_TOTAL = Counter("streambridge_chunks_total", "Agent outputs streamed (deltas).",
                       ["path", "agent", "format"])
DEAD_LETTERED = Counter("streambridge_transcripts_dead_lettered_total",
                        "Transcript snapshots the store refused MAX_ATTEMPTS times and "
                        "dropped (each also logged with its ids), by kind.", ["kind"])
STORE_RETRIES = Counter("streambridge_store_write_retries_total",
                        "Store writes that failed and were retried, by cause: transient "
                        "(database locked or unreachable) or refused (the row itself).",
                        ["cause"])

BACKGROUND_RUNS = Gauge("streambridge_background_runs",
                        "Runs going on with no attached request (background, "
                        "on_disconnect=continue, reconnect grace).", ["path"],
                        multiprocess_mode="livesum")
RESUMES_TOTAL = Counter("streambridge_resumes_total",
                        "GET /v1/streams/{id} reads, by result: ok (replayed and "
                        "followed), reset (the cursor could not be served: reset event), "
                        "gone (unknown, expired or another tenant's: 404).",
                        ["path", "result"])
LOG_APPEND = Histogram("streambridge_log_append_seconds",
                       "Time the engine spent handing an entry to the stream log: "
                       "append (sampled, never awaits) and finish (the terminal entry, "
                       "awaited until stored).", ["op"], buckets=_LATENCY)
CANCEL_LATENCY = Histogram("streambridge_cancel_latency_seconds",
                           "From a cancel reaching the owning process to its stream's end.",
                           buckets=_LATENCY)
_APPEND, _FINISH = LOG_APPEND.labels("append"), LOG_APPEND.labels("finish")
LIMIT_SLOTS = Gauge("streambridge_limit_slots_in_use",
                    "Concurrency slots held by this host's streams, by scope kind "
                    "(global, agent, key; leases in Redis when STREAMBRIDGE_REDIS_URL is set).",
                    ["scope"], multiprocess_mode="livesum")
LIMIT_ENFORCED = Gauge("streambridge_limit_enforced",
                       "The concurrency limit enforced now, by scope kind (+Inf: none; the "
                       "per-process share while the local failure mode is engaged).",
                       ["scope"], multiprocess_mode="max")
LIMIT_SHED = Counter("streambridge_limit_shed_total",
                     "Requests refused by a limit, by scope (global, agent, key, buffered) "
                     "and kind (concurrency, rate, unavailable).", ["scope", "kind"])
LEASE_RENEWALS_FAILED = Counter("streambridge_limit_lease_renewals_failed_total",
                                "Renewals of this process' slot leases that Redis did not "
                                "answer.")
LIMITS_DEGRADED = Gauge("streambridge_limits_degraded",
                        "1 while the cluster limits run in their Redis failure mode "
                        "(STREAMBRIDGE_LIMITS_ON_REDIS_FAILURE), by mode.", ["mode"],
                        multiprocess_mode="max")

CONTENT_TYPE = CONTENT_TYPE_LATEST


# Labelled children, looked up once per label set: prometheus_client's labels() takes a
# lock and validates on every call (a third of the per-stream setup cost, measured).
_STREAM_CHILDREN: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_OUTCOME_CHILDREN: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
_ACTIVE_CHILDREN: dict[str, Any] = {}


def _active(path: str) -> Any:
    child = _ACTIVE_CHILDREN.get(path)
    if child is None:
        child = _ACTIVE_CHILDREN[path] = ACTIVE_STREAMS.labels(path)
    return child


def stream_started(path: str) -> None:
    """Count a stream as running (paired with ``observe`` at its finish)."""
    _active(path).inc()


def observe(record: StreamRecord) -> None:
    """Finish hook: record one stream's outcome, latency and size."""
    info = record.info
    outcome = record.outcome.value
    _active(info.path).dec()
    key = (info.path, info.agent, info.format)
    per_stream = _STREAM_CHILDREN.get(key)
    if per_stream is None:
        per_stream = _STREAM_CHILDREN[key] = (TTFC.labels(*key), CHUNKS_TOTAL.labels(*key))
    okey = (outcome, *key)
    per_outcome = _OUTCOME_CHILDREN.get(okey)
    if per_outcome is None:
        per_outcome = _OUTCOME_CHILDREN[okey] = (
            STREAMS_TOTAL.labels(*okey), DURATION.labels(*key, outcome))
    per_outcome[0].inc()
    per_outcome[1].observe(record.duration)
    if record.ttfc is not None:
        per_stream[0].observe(record.ttfc)
    if record.tokens:
        per_stream[1].inc(record.tokens)


def rejected(path: str, agent: str, fmt: str) -> None:
    """Count a request refused at admission (429/503) as outcome ``rejected``."""
    STREAMS_TOTAL.labels("rejected", path, agent, fmt).inc()


def log_append(seconds: float) -> None:
    """Observe one (sampled) append to the stream log."""
    _APPEND.observe(seconds)


def log_finish(seconds: float) -> None:
    """Observe one terminal entry stored in the stream log."""
    _FINISH.observe(seconds)


def cancel_latency(seconds: float) -> None:
    """Observe the time from a cancel reaching the owner to its stream's end."""
    CANCEL_LATENCY.observe(seconds)


def background_runs(path: str, delta: int) -> None:
    """Count a detached run starting (+1) or ending (-1)."""
    BACKGROUND_RUNS.labels(path).inc(delta)


def resumed(path: str, result: str) -> None:
    """Count one resume by result: ``ok``, ``reset`` or ``gone``."""
    RESUMES_TOTAL.labels(path, result).inc()
def shed(scope: str, kind: str) -> None:
    """Count one request refused by a limit of ``scope`` (``kind``: concurrency, rate,
    unavailable)."""
    LIMIT_SHED.labels(scope, kind).inc()


def transcript_dead_lettered(kind: str) -> None:
    """Count one dead-lettered snapshot (``kind``: ``checkpoint`` or ``final``)."""
    DEAD_LETTERED.labels(kind).inc()


def store_retry(cause: str) -> None:
    """Count one failed store write that will be retried (``transient`` or ``refused``)."""
    STORE_RETRIES.labels(cause).inc()


_LIVE_FILE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")


def forget_dead_workers(directory: str) -> list[int]:
    """Drop the live gauges of worker processes that no longer exist; return their pids.

    gunicorn tells us when a worker dies (``child_exit``); uvicorn's supervisor does
    not, so ``/metrics`` checks the pids that own live-gauge files (one ``kill(pid, 0)``
    each) before it sums them: a killed worker's running streams stop counting.
    """
    dead = set()
    for name in os.listdir(directory):
        m = _LIVE_FILE.match(name)
        if m is None:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.add(pid)
        except PermissionError:  # alive, another user's
            pass
    for pid in dead:
        try:
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
        except FileNotFoundError:  # another worker removed it first
            pass
    return sorted(dead)


def render() -> bytes:
    """Return the Prometheus text exposition for this process or all workers."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        forget_dead_workers(directory)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        for _ in range(2):
            try:
                return generate_latest(registry)
            except struct.error:
                # A worker was creating its first metric file as we read it (its header
                # not yet written) and prometheus_client raised; the file is whole a
                # moment later. Found by the shared test servers: a scrape right after
                # start answered 500. Rare, so a short blocking wait is acceptable.
                time.sleep(0.01)
        return generate_latest(registry)
    return generate_latest()
