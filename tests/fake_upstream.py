"""A faithful fake LLM upstream: Ollama ``/api/chat`` NDJSON and OpenAI SSE, on loopback.

A real HTTP/1.1 server (asyncio streams, keep-alive, chunked bodies: one HTTP chunk
per token, as the real servers send them), run as a subprocess by
:class:`FakeUpstream`. Its bytes were checked with the official ``ollama`` and
``openai`` clients (tests/providers/test_fake_upstream.py).

Each request is programmed by a script: the ``X-Fake-Script`` header (JSON), or a
last message whose content is ``{"fake": {...}}``. Script fields, all optional:

- ``text`` / ``tokens``: the words to stream (cycled up to ``tokens``); ``clock``:
  every token is the wall time it was sent (``"1712345678.123456 "``, for benchmarks).
- ``pace_ms`` (between tokens), ``first_token_delay_ms`` (before the first).
- ``stall_at`` k: after k tokens, go silent until the client hangs up.
- ``drop_at`` k: after k tokens, close the connection mid-body.
- ``error_at`` k: after k tokens, send the provider's in-band error object.
- ``status``, ``error`` (message), ``retry_after``: answer with an HTTP error in the
  provider's shape, ``fail_times`` times for this ``key`` (default: every time).
- ``key``: names the request in the records (and counts ``fail_times``).
- ``require_key``: the API key this request must carry (default: the server's
  ``--api-key``); any other gets OpenAI's 401 ``invalid_api_key``.
- ``finish``: the finish reason (``stop`` or ``length``).

``GET /_fake/records?key=K`` returns what happened to each request: when it
started, when its first token and its end were written, how many tokens were
sent, and ``client_closed``: the wall time the client closed the connection
during the response (None if it did not).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from itertools import cycle, islice
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from async_core.harness import ServerProcess

DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog. "
API_KEY = "sk-fake-upstream-key"
_PIECE = re.compile(r"\S*\s*")
LISTEN = re.compile(r"fake upstream listening on http://127\.0\.0\.1:(\d+)")
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable"}


def fake(**script: Any) -> str:
    """The message content that programs the fake upstream with ``script``."""
    return json.dumps({"fake": script})


class _App:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.records: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.ids = itertools.count(1)

    async def connection(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                keep = await self.route(method, target, headers, body, reader, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            return  # shutting down (a cancelled handler would be logged as an error)
        finally:
            writer.close()

    async def route(self, method: str, target: str, headers: dict[str, str], body: bytes,
                    reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        url = urlsplit(target)
        if method == "GET" and url.path == "/_fake/records":
            key = parse_qs(url.query).get("key", [None])[0]
            found = [r for r in self.records if key is None or r["key"] == key]
            return _send_json(writer, 200, found)
        if method == "GET" and url.path in ("/healthz", "/"):
            return _send_json(writer, 200, {"status": "ok"})
        if method != "POST" or url.path not in ("/api/chat", "/v1/chat/completions"):
            return _send_json(writer, 404, {"error": f"no route {method} {url.path}"})
        provider = "ollama" if url.path == "/api/chat" else "openai"
        data = json.loads(body or b"{}")
        script = _script(headers, data)
        key = str(script.get("key", ""))
        self.counts[key] += 1
        record: dict[str, Any] = {
            "key": key, "provider": provider, "attempt": self.counts[key],
            "started": time.time(), "first_token": None, "ended": None, "tokens": 0,
            "status": 200, "client_closed": None, "model": data.get("model"),
            "authorization": bool(headers.get("authorization")),
            "user_agent": headers.get("user-agent", "")}
        self.records.append(record)
        error = self.error_for(provider, headers, script, record)
        if error is not None:
            status, payload, extra = error
            record["status"], record["ended"] = status, time.time()
            return _send_json(writer, status, payload, extra)
        stream = Stream(provider, data, script, record, next(self.ids))
        if not data.get("stream", provider == "ollama"):  # the providers' defaults
            return _send_json(writer, 200, stream.whole())
        return await stream.run(reader, writer)

    def error_for(self, provider: str, headers: dict[str, str], script: dict[str, Any],
                  record: dict[str, Any]) -> tuple[int, Any, dict[str, str]] | None:
        required = script.get("require_key", self.api_key)
        if provider == "openai" and required:
            given = headers.get("authorization", "").removeprefix("Bearer ").strip()
            if given != required:
                shown = given[:3] + "*" * 8 + given[-4:] if len(given) > 8 else "sk-***"
                return 401, {"error": {
                    "message": f"Incorrect API key provided: {shown}. You can find your API "
                               "key at https://platform.openai.com/account/api-keys.",
                    "type": "invalid_request_error", "param": None,
                    "code": "invalid_api_key"}}, {}
        status = script.get("status")
        fail_times = script.get("fail_times")
        if not status or (fail_times is not None and record["attempt"] > fail_times):
            return None
        message = script.get("error", _REASONS.get(status, "error"))
        extra = {"Retry-After": str(script["retry_after"])} if "retry_after" in script else {}
        if provider == "ollama":
            return status, {"error": message}, extra
        kind = {429: "rate_limit_exceeded", 401: "invalid_request_error"}.get(
            status, "server_error")
        return status, {"error": {"message": message, "type": kind, "param": None,
                                  "code": kind if status == 429 else None}}, extra


class Stream:
    """One streamed response in the provider's exact format."""

    def __init__(self, provider: str, data: dict[str, Any], script: dict[str, Any],
                 record: dict[str, Any], number: int) -> None:
        self.provider, self.data, self.script, self.record = provider, data, script, record
        self.model = data.get("model") or "fake"
        self.id = f"chatcmpl-fake{number}"
        self.created = int(time.time())
        words = [p for p in _PIECE.findall(str(script.get("text", DEFAULT_TEXT))) if p]
        count = int(script.get("tokens", len(words)))
        self.clock = bool(script.get("clock"))
        self.words = list(islice(cycle(words), count)) if not self.clock else [""] * count
        prompt = " ".join(str(m.get("content", "")) for m in data.get("messages", []))
        self.prompt_tokens = len(prompt.split())
        so = data.get("stream_options") or {}
        self.include_usage = bool(so.get("include_usage"))

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        s, rec = self.script, self.record
        ctype = ("application/x-ndjson" if self.provider == "ollama"
                 else "text/event-stream; charset=utf-8")
        writer.write(_head(200, {"Content-Type": ctype, "Transfer-Encoding": "chunked"}))
        closed = asyncio.ensure_future(reader.read(1))  # b"" (EOF): the client hung up
        closed.add_done_callback(lambda f: _on_close(f, rec))
        try:
            if self.provider == "openai":
                self._chunk(writer, self._openai({"role": "assistant", "content": ""}))
            loop = asyncio.get_running_loop()
            start = loop.time() + float(s.get("first_token_delay_ms", 0)) / 1000
            pace = float(s.get("pace_ms", 0)) / 1000
            for i, word in enumerate(self.words):
                if i == s.get("stall_at"):
                    await asyncio.wait({closed}, timeout=120)
                    return False
                if i == s.get("drop_at"):
                    writer.close()  # mid-body: no terminating chunk
                    return False
                if i == s.get("error_at"):
                    self._chunk(writer, self._error())
                    return self._end(writer, closed, last=False)
                delay = start + i * pace - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if closed.done():
                    return False
                text = f"{time.time():.6f} " if self.clock else word
                self._chunk(writer, self._token(text))
                rec["tokens"] += 1
                if rec["first_token"] is None:
                    rec["first_token"] = time.time()
                if writer.transport.get_write_buffer_size() > 65536:
                    await writer.drain()
            n = len(self.words)
            if n in (s.get("stall_at"), s.get("drop_at"), s.get("error_at")):
                return await self.run_end_fault(writer, closed, n)
            self._finish(writer)
            return self._end(writer, closed, last=True)
        finally:
            # A cancelled read consumes nothing: the next request's bytes stay unread.
            closed.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await closed

    async def run_end_fault(self, writer: asyncio.StreamWriter, closed: asyncio.Future[bytes],
                            n: int) -> bool:
        s = self.script
        if n == s.get("stall_at"):
            await asyncio.wait({closed}, timeout=120)
            return False
        if n == s.get("drop_at"):
            writer.close()
            return False
        self._chunk(writer, self._error())
        return self._end(writer, closed, last=False)

    def _end(self, writer: asyncio.StreamWriter, closed: asyncio.Future[bytes],
             last: bool) -> bool:
        if self.provider == "openai" and last:
            self._chunk(writer, b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        self.record["ended"] = time.time()
        return True

    @staticmethod
    def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _token(self, text: str) -> bytes:
        if self.provider == "ollama":
            return _line({"model": self.model, "created_at": _now(),
                          "message": {"role": "assistant", "content": text}, "done": False})
        return self._openai({"content": text})

    def _openai(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish}]}
        if self.include_usage:
            chunk["usage"] = None
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    def _finish(self, writer: asyncio.StreamWriter) -> None:
        reason = str(self.script.get("finish", "stop"))
        n = self.record["tokens"]
        if self.provider == "ollama":
            self._chunk(writer, _line({
                "model": self.model, "created_at": _now(),
                "message": {"role": "assistant", "content": ""}, "done_reason": reason,
                "done": True, "total_duration": 1000 * n, "load_duration": 1000,
                "prompt_eval_count": self.prompt_tokens, "prompt_eval_duration": 1000,
                "eval_count": n, "eval_duration": 1000 * n}))
            return
        self._chunk(writer, self._openai({}, reason))
        if self.include_usage:
            usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": n,
                     "total_tokens": self.prompt_tokens + n}
            chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                     "model": self.model, "system_fingerprint": "fp_fake", "choices": [],
                     "usage": usage}
            self._chunk(writer, b"data: " + json.dumps(chunk).encode() + b"\n\n")

    def _error(self) -> bytes:
        message = str(self.script.get("error", "the model crashed"))
        if self.provider == "ollama":
            return _line({"error": message})
        return b"data: " + json.dumps({"error": {"message": message, "type": "server_error",
                                                 "param": None, "code": None}}).encode() + b"\n\n"

    def whole(self) -> dict[str, Any]:
        """The ``stream: false`` answer."""
        text, n = "".join(self.words), len(self.words)
        self.record["tokens"], self.record["ended"] = n, time.time()
        if self.provider == "ollama":
            return {"model": self.model, "created_at": _now(),
                    "message": {"role": "assistant", "content": text}, "done_reason": "stop",
                    "done": True, "prompt_eval_count": self.prompt_tokens, "eval_count": n}
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model, "choices": [{"index": 0, "message": {
                    "role": "assistant", "content": text}, "logprobs": None,
                    "finish_reason": "stop"}],
                "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": n,
                          "total_tokens": self.prompt_tokens + n}}


def _on_close(future: asyncio.Future[bytes], record: dict[str, Any]) -> None:
    # Runs in the loop iteration that saw the EOF (or the reset): the time is exact.
    if not future.cancelled() and (future.exception() is not None or future.result() == b""):
        record["client_closed"] = time.time()


def _script(headers: dict[str, str], data: dict[str, Any]) -> dict[str, Any]:
    if "x-fake-script" in headers:
        return dict(json.loads(headers["x-fake-script"]))
    messages = data.get("messages") or []
    if messages:
        try:
            obj = json.loads(messages[-1].get("content", ""))
        except (ValueError, TypeError):
            return {}
        if isinstance(obj, dict) and isinstance(obj.get("fake"), dict):
            return dict(obj["fake"])
    return {}


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def _line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
             f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _send_json(writer: asyncio.StreamWriter, status: int, payload: Any,
               extra: dict[str, str] | None = None) -> bool:
    body = json.dumps(payload).encode()
    writer.write(_head(status, {"Content-Type": "application/json",
                                "Content-Length": str(len(body)), **(extra or {})}) + body)
    return True


async def _main(port: int, api_key: str) -> None:
    app = _App(api_key)
    server = await asyncio.start_server(app.connection, "127.0.0.1", port, backlog=1024)
    print(f"fake upstream listening on http://127.0.0.1:{server.sockets[0].getsockname()[1]}",
          flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


class FakeUpstream(ServerProcess):
    """The fake upstream as a subprocess on an ephemeral loopback port
    (an ``async_core.harness.ServerProcess``: ready once it prints its port).

    Args:
        api_key: the key ``/v1/chat/completions`` requires ("" accepts any).
    """

    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        super().__init__("fake-upstream", [sys.executable, "-m", "tests.fake_upstream",
                                           "--port", "0", "--api-key", api_key],
                         env={"PYTHONUNBUFFERED": "1"}, cwd=Path(__file__).resolve().parent.parent,
                         listen=LISTEN, health=None)
        self.url = self.base_url

    def env(self) -> dict[str, str]:
        """Settings that point a streambridge server at this upstream."""
        return {"STREAMBRIDGE_OLLAMA_URL": self.url,
                "STREAMBRIDGE_OPENAI_BASE_URL": self.url + "/v1",
                "STREAMBRIDGE_OPENAI_API_KEY": self.api_key}

    def records(self, key: str) -> list[dict[str, Any]]:
        """What happened to the requests scripted with ``key``, in arrival order."""
        return list(httpx.get(self.url + "/_fake/records", params={"key": key},
                              timeout=10).json())

    def wait_records(self, key: str, check: Callable[[list[dict[str, Any]]], bool],
                     timeout: float = 5.0) -> list[dict[str, Any]]:
        """Poll the records of ``key`` until ``check`` holds; return them (or raise)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.records(key)
            if check(found):
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"records of {key!r} never matched: {found}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int:
        """SIGTERM the fake upstream (started by us), wait, SIGKILL if it lingers."""
        try:
            return super().stop(timeout, sig)
        finally:
            self.log_path.unlink(missing_ok=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=API_KEY)
    args = parser.parse_args()
    asyncio.run(_main(args.port, args.api_key))
