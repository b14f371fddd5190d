"""Reading native SSE over HTTP for the cluster tests: whole, or cut after N deltas."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from async_core.wire import SSEDecoder, SSEMessage


@dataclass
class Read:
    """What one request read: status, headers and the events up to the cut or the end."""

    status: int
    headers: httpx.Headers
    events: list[SSEMessage] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The concatenated delta text."""
        return "".join(json.loads(e.data)["text"] for e in self.events if e.event == "delta")

    @property
    def last(self) -> SSEMessage:
        """The last event read."""
        return self.events[-1]

    def data(self, i: int = -1) -> Any:
        """The JSON payload of event ``i`` (the last by default)."""
        return json.loads(self.events[i].data)


def sse(method: str, url: str, *, body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None, cut_after: int | None = None,
        timeout: float = 30.0) -> Read:
    """Send one request and read its SSE events until the end, or cut after some deltas.

    Args:
        method: ``POST`` (a chat) or ``GET`` (a resume).
        url: the absolute URL.
        body: the JSON body of a POST.
        headers: extra headers (``Last-Event-ID``).
        cut_after: close the connection once this many deltas were read.
        timeout: the read timeout.
    """
    decoder = SSEDecoder()
    hdrs = {"Accept": "text/event-stream", **(headers or {})}
    with httpx.stream(method, url, json=body, headers=hdrs, timeout=timeout) as r:
        out = Read(r.status_code, r.headers)
        if r.status_code != 200:
            r.read()
            return out
        deltas = 0
        for chunk in r.iter_raw():
            for msg in decoder.feed(chunk):
                out.events.append(msg)
                deltas += msg.event == "delta"
                if cut_after is not None and deltas >= cut_after:
                    return out  # leaving the block closes the connection: the cut
    return out
