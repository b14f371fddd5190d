"""The Flask branch's WSGI adapter (``migration._hybrid_wsgi``), in process, with real Flask apps.

What it does differently from a2wsgi, which it replaced (issue 10, "Load"): the body is
read on the loop before a thread is taken, so the app's reads never wait on the loop
and a slow sender holds no thread; the response start leaves with the first chunk.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, Response, request

from legacy_bridge import StreamBridge
from migration._hybrid_wsgi import WSGIBranch

Message = dict[str, Any]


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> Message:
    return {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
            "root_path": "", "query_string": b"", "headers": headers or [],
            "http_version": "1.1", "scheme": "http", "server": ("testserver", 80),
            "client": ("127.0.0.1", 50000), "asgi": {"version": "3.0"}}


def _app(events: list[str]) -> Flask:
    """A user's Flask app: an echo of the body, and a streamed generator of three chunks."""
    app = Flask("user")
    StreamBridge(app)  # the front needs the extension; these routes do not use it

    @app.post("/echo")
    def echo() -> Response:
        events.append("view")
        return Response(request.get_data(), content_type="application/octet-stream")

    @app.get("/three")
    def three() -> Response:
        def chunks() -> Iterator[bytes]:
            for i in range(3):
                events.append(f"yield {i}")
                yield b"%d;" % i
        return Response(chunks(), content_type="text/plain")

    return app


class _Client:
    """One request's ASGI side: a body sent in parts (with pauses), what the app sent."""

    def __init__(self, parts: list[bytes], events: list[str], pause: float = 0.0) -> None:
        self.parts, self.events, self.pause = list(parts), events, pause
        self.sent: list[Message] = []
        self.given = 0

    async def receive(self) -> Message:
        if not self.parts:
            await asyncio.Event().wait()  # the client stays: no disconnect
        if self.given == 1:
            await asyncio.sleep(self.pause)  # the rest of the body comes later
        self.given += 1
        self.events.append("receive")
        part = self.parts.pop(0)
        return {"type": "http.request", "body": part, "more_body": bool(self.parts)}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


def _serve(method: str, path: str, parts: list[bytes], events: list[str],
           max_body: int = 1 << 20) -> _Client:
    """One request to ``_app`` through a ``WSGIBranch`` of one thread; the client after it."""
    branch = WSGIBranch(_app(events).wsgi_app, threads=1, max_body=max_body)
    client = _Client(parts, events)

    async def main() -> None:
        body = await branch.read_body(client.receive)
        assert body is not None
        assert await branch(_scope(method, path), body, client.send) is None

    try:
        asyncio.run(main())
    finally:
        branch.close(wait=True)
    return client


def test_a_body_in_several_messages_is_read_whole_on_the_loop_before_the_app_runs() -> None:
    """wsgi.input is the whole body in memory: the view runs after the last part, and
    reads it without going back to the loop."""
    events: list[str] = []
    client = _serve("POST", "/echo", [b"one,", b"two,", b"three"], events)
    assert events == ["receive", "receive", "receive", "view"]
    assert client.body == b"one,two,three"
    assert client.sent[0]["type"] == "http.response.start" and client.sent[0]["status"] == 200


def test_a_body_over_the_limit_is_read_on_from_the_loop_as_the_app_reads() -> None:
    """Past max_body the app still gets the whole body, the rest read as it reads."""
    events: list[str] = []
    client = _serve("POST", "/echo", [b"aaaa", b"bbbb", b"cc"], events, max_body=4)
    assert client.body == b"aaaabbbbcc"
    assert events[:3] == ["receive", "receive", "view"]  # the last part read by the app


def test_a_streamed_response_starts_with_its_first_chunk_and_ends_once() -> None:
    """A generator's chunks arrive in order, after one response start, then one end."""
    client = _serve("GET", "/three", [b""], [])
    kinds = [(m["type"], m.get("more_body")) for m in client.sent]
    assert kinds[0] == ("http.response.start", None)
    assert kinds[-1] == ("http.response.body", False)
    assert [m for m in client.sent if m["type"] == "http.response.start"] == client.sent[:1]
    assert client.body == b"0;1;2;"


def test_a_slow_body_holds_no_wsgi_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """With one WSGI thread, a request whose body trickles in does not stop another
    request from being served meanwhile (a2wsgi read the body in the thread)."""
    from migration._flagfile import FlagStore
    from migration._hybrid_branches import run_lifespan
    from migration.flags import FlagConfig
    from migration.hybrid import HybridFront

    monkeypatch.setattr(signal, "signal", lambda *a: None)  # keep pytest's SIGTERM handler
    events: list[str] = []
    front = HybridFront(flags=FlagStore(None, FlagConfig(mode="legacy")), app=_app(events),
                        threads=1)
    slow = _Client([b"first half,", b"second half"], events, pause=1.0)
    quick = _Client([b""], [])

    async def main() -> float:
        shutdown = await run_lifespan(front)  # type: ignore[arg-type]
        try:
            slow_task = asyncio.create_task(front(
                _scope("POST", "/echo", [(b"content-length", b"22")]), slow.receive, slow.send))
            await asyncio.sleep(0.1)  # the slow request is in, its body half sent
            started = time.monotonic()
            await front(_scope("GET", "/three"), quick.receive, quick.send)
            elapsed = time.monotonic() - started
            await asyncio.wait_for(slow_task, 5)
            return elapsed
        finally:
            await shutdown()

    try:
        elapsed = asyncio.run(main())
    finally:
        front.wsgi.close(wait=True)
    assert quick.sent[0]["status"] == 200 and quick.body == b"0;1;2;"
    assert elapsed < 0.5, f"a request waited {elapsed:.2f} s for the slow one's thread"
    assert slow.sent[0]["status"] == 200 and slow.body == b"first half,second half"
    assert not [t for t in threading.enumerate() if t.name.startswith("WSGI") and t.is_alive()]
