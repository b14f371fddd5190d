"""The polled rows of ``streambridge compare``: what Flask shops run, built as they do.

- ``celery-pubsub`` (``web``): the handler subscribes to a fresh Redis pub/sub
  channel, enqueues a Celery task (Redis broker) that generates the tokens and
  ``PUBLISH``es each one, and polls the subscription (``get_message``).
- ``thread-queue`` (``web_thread``): the handler starts a thread that generates the
  tokens into a ``queue.Queue`` and polls the queue (``get_nowait``).

Both sleep ``POLL_SECONDS`` when a poll found nothing and forward what they found as
SSE. The web side is a plain WSGI callable served by ``gunicorn -k gthread`` (a
thread a stream); the Celery worker is ``celery worker --pool threads``; ``_rows``
starts them. The pacing is the demo agent's (``options.tokens``,
``options.interval_ms``), so the rows compare transport, not generation. The Celery
row reads the Redis URL from ``STREAMBRIDGE_REDIS_URL`` (db 0: pub/sub; db 1: the
broker).
"""

from __future__ import annotations

import functools
import json
import queue
import threading
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


def _generate(publish: Callable[[str], Any], tokens: int, interval_ms: float) -> None:
    """``tokens`` tokens at the demo agent's pace, each published as JSON, then the end."""
    for i in range(tokens):
        if interval_ms:
            time.sleep(interval_ms / 1000)
        publish(json.dumps({"text": f"token{i} "}))
    publish(json.dumps({"done": True, "tokens": tokens}))


@app.task(name="sbcompare.stream")  # type: ignore[untyped-decorator]
def stream(channel: str, tokens: int, interval_ms: float) -> None:
    """The Celery task: generate, publishing each token on ``channel``."""
    r = redis.Redis.from_url(_url())
    _generate(functools.partial(r.publish, channel), tokens, interval_ms)


Start = Callable[[str, list[tuple[str, str]]], Any]
Poll = Callable[[], str | bytes | None]  # one poll: a published JSON message, or None


def _front(start: Callable[[dict[str, Any]], tuple[Poll, Callable[[], None]]]
           ) -> Callable[[dict[str, Any], Start], Iterable[bytes]]:
    """A WSGI app: ``POST /v1/chat`` starts the job and streams its polled output."""
    def app(environ: dict[str, Any], start_response: Start) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]
        if environ.get("PATH_INFO") != "/v1/chat" or environ.get("REQUEST_METHOD") != "POST":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        size = int(environ.get("CONTENT_LENGTH") or 0)
        options = json.loads(environ["wsgi.input"].read(size) or b"{}").get("options", {})
        poll, close = start(options)
        start_response("200 OK", [("Content-Type", "text/event-stream"),
                                  ("Cache-Control", "no-cache")])
        return _sse(poll, close)

    return app


def _sse(poll: Poll, close: Callable[[], None]) -> Iterator[bytes]:
    try:
        while True:
            msg = poll()
            if msg is None:
                time.sleep(POLL_SECONDS)
                continue
            data = json.loads(msg)
            if data.get("done"):
                yield encode_sse(event="done", data=json.dumps(
                    {"finish_reason": "stop", "tokens": data["tokens"]}))
                return
            yield encode_sse(event="delta", data=json.dumps(data))
    finally:
        close()


def _pace(options: dict[str, Any]) -> tuple[int, float]:
    return int(options.get("tokens", 64)), float(options.get("interval_ms", 20))


def _celery_job(options: dict[str, Any]) -> tuple[Poll, Callable[[], None]]:
    channel = f"sbcompare:{uuid.uuid4().hex}"
    sub = redis.Redis.from_url(_url()).pubsub(  # type: ignore[no-untyped-call]
        ignore_subscribe_messages=True)
    sub.subscribe(channel)  # before the task starts: nothing it publishes is missed
    with app.connection_for_write(_broker()) as conn:
        app.send_task("sbcompare.stream", queue=QUEUE, connection=conn,
                      args=[channel, *_pace(options)])

    def poll() -> bytes | None:
        msg = sub.get_message()
        return None if msg is None else msg["data"]

    return poll, sub.close


def _thread_job(options: dict[str, Any]) -> tuple[Poll, Callable[[], None]]:
    q: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_generate, args=(q.put, *_pace(options)), daemon=True).start()

    def poll() -> str | None:
        try:
            return q.get_nowait()
        except queue.Empty:
            return None

    return poll, lambda: None


web = _front(_celery_job)  # celery-pubsub
web_thread = _front(_thread_job)  # thread-queue
