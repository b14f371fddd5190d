"""The "Celery + Redis pub/sub, polled" row of ``streambridge compare``: a real one.

What many Flask shops run for background replies, built the way they build it: the
web handler subscribes to a fresh Redis pub/sub channel, enqueues a Celery task
(Redis broker) that generates the tokens and ``PUBLISH``es each one, and then polls
the subscription (``get_message``, then ``time.sleep(POLL_SECONDS)`` when nothing
came) and forwards what it found as SSE. The web side is a plain WSGI callable
(``web``) served by ``gunicorn -k gthread`` (a thread a stream), the worker is
``celery worker --pool threads``; ``_rows`` starts both. The task's pacing is the demo
agent's (``options.tokens``, ``options.interval_ms``), so the row compares transport,
not generation. Both read the Redis URL from ``STREAMBRIDGE_REDIS_URL`` (db 0: pub/sub;
db 1: the broker).
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis
from celery import Celery

from .._settings import Settings
from ..wire import encode_sse

POLL_SECONDS = 0.05  # the web handler's sleep between empty polls of its subscription
QUEUE = "sbcompare"


@functools.cache
def _url() -> str:
    url = Settings.from_env().log.redis_url
    if not url:
        raise RuntimeError("the Celery row needs STREAMBRIDGE_REDIS_URL")
    return url


def _broker() -> str:
    """The broker: db 1 of the same Redis (``_rows`` passes it to the worker as ``-b``)."""
    base = _url().rsplit("/", 1)[0] if _url().count("/") > 2 else _url()
    return f"{base}/1"


app = Celery("sbcompare")
app.conf.update(task_default_queue=QUEUE, worker_hijack_root_logger=False,
                broker_connection_retry_on_startup=True, task_acks_late=False)


@app.task(name="sbcompare.stream")  # type: ignore[untyped-decorator]
def stream(channel: str, tokens: int, interval_ms: float) -> None:
    """Generate ``tokens`` tokens at the demo agent's pace, publishing each one."""
    r = redis.Redis.from_url(_url())
    for i in range(tokens):
        if interval_ms:
            time.sleep(interval_ms / 1000)
        r.publish(channel, json.dumps({"text": f"token{i} "}))
    r.publish(channel, json.dumps({"done": True, "tokens": tokens}))


Start = Callable[[str, list[tuple[str, str]]], Any]


def web(environ: dict[str, Any], start_response: Start) -> Iterable[bytes]:
    """The WSGI app: ``POST /v1/chat`` (SSE, polled pub/sub) and ``GET /healthz``."""
    if environ.get("PATH_INFO") == "/healthz":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    if environ.get("PATH_INFO") != "/v1/chat" or environ.get("REQUEST_METHOD") != "POST":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    size = int(environ.get("CONTENT_LENGTH") or 0)
    options = json.loads(environ["wsgi.input"].read(size) or b"{}").get("options", {})
    channel = f"sbcompare:{uuid.uuid4().hex}"
    sub = redis.Redis.from_url(_url()).pubsub(  # type: ignore[no-untyped-call]
        ignore_subscribe_messages=True)
    sub.subscribe(channel)  # before the task starts: nothing it publishes is missed
    with app.connection_for_write(_broker()) as conn:
        app.send_task("sbcompare.stream", queue=QUEUE, connection=conn, args=[
            channel, int(options.get("tokens", 64)), float(options.get("interval_ms", 20))])
    start_response("200 OK", [("Content-Type", "text/event-stream"),
                              ("Cache-Control", "no-cache")])
    return _poll(sub)


def _poll(sub: Any) -> Iterator[bytes]:
    try:
        while True:
            msg = sub.get_message()
            if msg is None:
                time.sleep(POLL_SECONDS)
                continue
            data = json.loads(msg["data"])
            if data.get("done"):
                yield encode_sse(event="done", data=json.dumps(
                    {"finish_reason": "stop", "tokens": data["tokens"]}))
                return
            yield encode_sse(event="delta", data=json.dumps(data))
    finally:
        sub.close()
