"""The agent and the two baseline Flask apps that ``scripts/bench_legacy.py`` compares.

Every variant streams the same *sync* generator, :func:`bench_sync`, whose tokens
are their own production wall time (``"1712345678.123456 "``), so a client can
compute each token's lag. It is registered for the product's servers through
``STREAMBRIDGE_AGENTS=bench_legacy_apps:AGENTS`` (agent ``bench``, with its async
twin :func:`bench_async` for the async path). Two Flask apps stand for what users
run today, each serving ``POST /v1/chat`` with one ``data: <token>\\n\\n`` frame per
token under gunicorn:

- ``direct_app()``: the view's generator iterates the agent itself;
- ``polling_app()``: the view starts a thread that puts tokens into a
  ``queue.Queue``; the view's generator polls it with ``get(timeout=0.1)``.

Options (request body ``options``): ``tokens``, ``interval_ms`` (0: unpaced),
``first_token_delay_ms``, and ``sid``: when set, the agent appends each token's
production time to ``$BENCH_STATE_DIR/<sid>`` and a last line ``end <time>`` when
its ``finally`` runs (the disconnect phase reads it). This module imports no Starlette:
the legacy servers load it.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import IO, Any

from flask import Flask, Response, request

from async_core import Agent, AgentRequest
from async_core.agents import check_type
from async_core.exceptions import BadRequest

_SID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_END = object()


def bench_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the benchmark agent's options and fill in defaults.

    Raises:
        BadRequest: an option has the wrong type or range.
    """
    tokens = check_type(options, "tokens", int, minimum=0, maximum=10_000_000)
    interval = check_type(options, "interval_ms", (int, float), minimum=0, maximum=600_000)
    delay = check_type(options, "first_token_delay_ms", (int, float), minimum=0,
                       maximum=600_000)
    sid = options.get("sid")
    if sid is not None and not (isinstance(sid, str) and _SID.fullmatch(sid)):
        raise BadRequest("options.sid must match [A-Za-z0-9_-]{1,64}")
    return {"tokens": 200 if tokens is None else tokens,
            "interval_ms": 10.0 if interval is None else float(interval),
            "first_token_delay_ms": float(delay or 0.0), "sid": sid}


def _record(sid: str | None) -> IO[str] | None:
    if sid is None:
        return None
    path = os.path.join(os.environ.get("BENCH_STATE_DIR", "/tmp"), sid)
    return open(path, "w", buffering=1)  # noqa: SIM115 - closed in the agent's finally


_noted: set[int | None] = set()  # the threads _note_threads last wrote


def _note_threads() -> None:
    """Write ``$BENCH_STATE_DIR/threads-<pid>.json`` (native thread id -> Python name),
    so the benchmark can split the worker's CPU by thread role (``_benchlib.thread_roles``)."""
    global _noted
    state = os.environ.get("BENCH_STATE_DIR")
    threads = threading.enumerate()
    ids = {t.native_id for t in threads}
    if state is None or ids <= _noted:  # every thread already noted: no write
        return
    _noted = ids
    names = {t.native_id: t.name for t in threads}
    path = os.path.join(state, f"threads-{os.getpid()}.json")
    with open(f"{path}.{threading.get_native_id()}", "w") as f:
        json.dump(names, f)
    os.replace(f.name, path)


def bench_sync(request: AgentRequest) -> Iterator[str]:
    """Yield ``tokens`` tokens, each its production wall time; ``time.sleep`` paces them."""
    opts = bench_options(request.options)
    interval = opts["interval_ms"] / 1000.0
    log = _record(opts["sid"])
    _note_threads()
    try:
        if opts["first_token_delay_ms"]:
            time.sleep(opts["first_token_delay_ms"] / 1000.0)
        for n in range(opts["tokens"]):
            if n and interval:
                time.sleep(interval)
            token = f"{time.time():.6f} "
            if log is not None:
                log.write(token + "\n")
            yield token
    finally:
        if log is not None:  # the agent's finally ran: it stopped
            log.write(f"end {time.time():.6f}\n")
            log.close()


async def bench_async(request: AgentRequest) -> AsyncIterator[str]:
    """The async twin of :func:`bench_sync` (``asyncio.sleep``; unpaced never awaits)."""
    opts = bench_options(request.options)
    interval = opts["interval_ms"] / 1000.0
    log = _record(opts["sid"])
    try:
        if opts["first_token_delay_ms"]:
            await asyncio.sleep(opts["first_token_delay_ms"] / 1000.0)
        for n in range(opts["tokens"]):
            if n and interval:
                await asyncio.sleep(interval)
            token = f"{time.time():.6f} "
            if log is not None:
                log.write(token + "\n")
            yield token
    finally:
        if log is not None:
            log.write(f"end {time.time():.6f}\n")
            log.close()


AGENTS = [Agent(name="bench", sync_fn=bench_sync, async_fn=bench_async,
                validate=bench_options)]

_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def _agent_request() -> AgentRequest:
    body = json.loads(request.get_data() or b"{}")
    options = bench_options(body.get("options") or {})
    return AgentRequest(({"role": "user", "content": body.get("message", "")},), options)


def _healthz() -> Response:
    return Response(b'{"status":"ok"}', content_type="application/json")


def direct_app() -> Flask:
    """Baseline: a Flask view whose generator iterates the sync agent directly."""
    app = Flask("bench_direct")

    @app.post("/v1/chat")
    def chat() -> Response:
        agent_request = _agent_request()

        def frames() -> Iterator[bytes]:
            gen = bench_sync(agent_request)
            try:
                for token in gen:
                    yield f"data: {token}\n\n".encode()
                yield b"event: done\ndata: {}\n\n"
            finally:
                gen.close()  # reached on GeneratorExit too: the agent's finally runs

        return Response(frames(), content_type="text/event-stream", headers=_HEADERS)

    app.add_url_rule("/healthz", "healthz", _healthz)
    return app


def polling_app() -> Flask:
    """Baseline: thread + ``queue.Queue``, the view polls with ``get(timeout=0.1)``."""
    app = Flask("bench_polling")

    @app.post("/v1/chat")
    def chat() -> Response:
        agent_request = _agent_request()
        q: queue.Queue[Any] = queue.Queue()  # unbounded, as in the common snippet

        def produce() -> None:
            for token in bench_sync(agent_request):
                q.put(token)
            q.put(_END)

        threading.Thread(target=produce, daemon=True).start()

        def frames() -> Iterator[bytes]:
            while True:
                try:
                    token = q.get(timeout=0.1)
                except queue.Empty:
                    continue
                if token is _END:
                    break
                yield f"data: {token}\n\n".encode()
            yield b"event: done\ndata: {}\n\n"

        return Response(frames(), content_type="text/event-stream", headers=_HEADERS)

    app.add_url_rule("/healthz", "healthz", _healthz)
    return app
