"""Client helpers for the tests: streaming readers and a raw-socket client.

The raw client is ``async_core.harness.RawStream`` with the tests' hybrid-50 pin.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from async_core import harness
from async_core.wire import NDJSONDecoder, SSEDecoder, SSEMessage

CHAT = {"messages": [{"role": "user", "content": "hello"}]}

# One client for the helpers here and in tests.servers: a new httpx client costs about
# 18 ms of CPU (its SSL context), and the helpers make thousands of requests a run (a
# wait_for() on a metric polls every 20 ms). No keep-alive: each request still opens
# a connection of its own, as a new client's would, and no cookie is kept between requests.
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0),
                    cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])))


class HybridPin:
    """The branch a test on ``hybrid-50`` claims, and the conversation ids that land there.

    Without a conversation id the hybrid front makes a random one, so its bucket, and the
    branch, would change from run to run (issue 12 item 7). On ``hybrid-50`` the
    conftest fixture ``hybrid_branch`` sets ``branch`` for each test (chosen from the
    test's name, so both branches are covered); ``chat_body``, ``stream`` and
    ``RawStream`` then give every native chat body without an id a fresh one of that
    branch, and ``stream`` records the ``X-Stream-Path`` those requests were served on.
    """

    def __init__(self) -> None:
        self.branch: str | None = None
        self.served: list[str] = []  # X-Stream-Path of the pinned streams, in order
        self.made: set[str] = set()
        self._prefix = uuid.uuid4().hex[:8]  # ids unique per run: servers are shared
        self._count = 0

    def conversation_id(self) -> str:
        """A new conversation id whose sticky bucket is on ``branch`` under hybrid-50."""
        from tests.servers import served_path

        while True:
            self._count += 1
            cid = f"pin-{self._prefix}-{self._count}"
            if served_path("hybrid-50", cid) == self.branch:
                self.made.add(cid)
                return cid

    def apply(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``body`` with a conversation id of the pinned branch, if it is a native chat
        body without one and a branch is pinned (else ``body`` unchanged)."""
        out = dict(body)
        if (self.branch and ("messages" in out or "message" in out)
                and "model" not in out and "conversation_id" not in out):
            out["conversation_id"] = self.conversation_id()
        return out


PIN = HybridPin()


@contextmanager
def drains_cleanly(proc: subprocess.Popen[Any], log: Path) -> Iterator[None]:
    """Around the use of a server started by hand (an installed ``streambridge`` in its
    own session): at the end SIGTERM must stop it within 30 s with no traceback in its
    log; on any failure its process group is killed."""
    try:
        yield
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert "Traceback" not in log.read_text(), log.read_text()


def chat_body(agent: str = "demo", **options: Any) -> dict[str, Any]:
    """A native chat body for ``agent`` with ``options`` (on hybrid-50: of the pinned
    branch, see ``HybridPin``)."""
    return PIN.apply({**CHAT, "agent": agent, "options": options})


@dataclass
class Streamed:
    """A finished streaming response: status, headers, raw bytes and decoded events."""

    status: int
    headers: httpx.Headers
    raw: bytes
    events: list[Any] = field(default_factory=list)

    def kinds(self) -> list[str]:
        """The event names (SSE) or ``event`` keys (NDJSON), in order."""
        return [e.event if isinstance(e, SSEMessage) else e.get("event") for e in self.events]

    def data(self) -> list[Any]:
        """The JSON payloads of SSE events (``[DONE]`` kept as a string)."""
        return [e.data if e.data == "[DONE]" else json.loads(e.data) for e in self.events]

    def text(self) -> str:
        """The concatenated delta text of a native SSE or NDJSON stream."""
        out = []
        for e in self.events:
            if isinstance(e, SSEMessage):
                if e.event == "delta":
                    out.append(json.loads(e.data)["text"])
            elif e.get("event") == "delta":
                out.append(e["text"])
        return "".join(out)


def stream(url: str, body: Mapping[str, Any], *, headers: Mapping[str, str] | None = None,
           timeout: float = 30.0) -> Streamed:
    """POST ``body`` and read the whole streamed response, decoding SSE or NDJSON."""
    pinned = PIN.apply(body) if "x-conversation-id" not in {
        k.lower() for k in (headers or {})} else dict(body)
    with HTTP.stream("POST", url, json=pinned, headers=headers, timeout=timeout) as r:
        raw = b"".join(r.iter_raw())
        ctype = r.headers.get("content-type", "")
        result = Streamed(r.status_code, r.headers, raw)
    if pinned.get("conversation_id") in PIN.made and "x-stream-path" in r.headers:
        PIN.served.append(r.headers["x-stream-path"])
    if ctype.startswith("text/event-stream"):
        result.events = SSEDecoder().feed(raw)
    elif ctype.startswith("application/x-ndjson"):
        result.events = NDJSONDecoder().feed(raw)
    return result


OPEN_RAW: list[RawStream] = []


class RawStream(harness.RawStream):
    """``async_core.harness.RawStream`` for the tests: its body pinned (``HybridPin``),
    and closed after the test if the test did not (``OPEN_RAW``)."""

    def __init__(self, port: int, path: str, body: Mapping[str, Any],
                 headers: Mapping[str, str] | None = None, rcvbuf: int | None = None) -> None:
        super().__init__(port, path, PIN.apply(body), headers, rcvbuf)
        OPEN_RAW.append(self)


def metric(base_url: str, name: str, **labels: str) -> float:
    """Return the sum of samples of ``name`` whose labels include ``labels``."""
    text = HTTP.get(base_url + "/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                total += sample.value
    return total


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns a truthy value; return it (or raise)."""
    return harness.wait_until(predicate, timeout, "condition", interval)


def exchange(port: int, data: bytes, *, half_close: bool = False,
             timeout: float = 10.0) -> bytes:
    """Send raw ``data``, then read until the server closes or a status line and headers
    arrived; return what was read (b"" if the server closed or reset without answering).

    ``half_close`` shuts our sending side after ``data``: the server sees the client
    stop mid-request (a truncated body) and must not wait for more.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed before taking it all
            pass
        out = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in out:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return out
            if not chunk:
                break
            out += chunk
        return out


def status_of(raw: bytes) -> int | None:
    """The status code of a raw response (None if there is no status line)."""
    parts = raw.split(b"\r\n", 1)[0].split(b" ")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
