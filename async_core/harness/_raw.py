"""A blocking raw HTTP/1.1 client that can stop reading, or vanish, mid-stream."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Mapping
from typing import Any

from ._process import HOST


class RawStream:
    """One ``POST`` of JSON on a socket of its own, read as far as the caller likes.

    Args:
        port: the server's port on 127.0.0.1.
        path: request path.
        body: JSON body.
        headers: extra request headers.
        rcvbuf: ``SO_RCVBUF`` (small: a client that stops reading fills it soon).
    """

    def __init__(self, port: int, path: str, body: Mapping[str, Any],
                 headers: Mapping[str, str] | None = None, rcvbuf: int | None = None) -> None:
        payload = json.dumps(body).encode()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((HOST, port))
        self.sock.settimeout(30)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n{extra}Connection: close\r\n\r\n".encode()
            + payload)
        self.buffer = b""
        self.head = b""

    def read_until(self, marker: bytes, count: int = 1, timeout: float = 10.0) -> bytes:
        """Read until ``marker`` has been seen ``count`` times; return all read so far.

        Raises:
            TimeoutError: not within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while self.buffer.count(marker) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"saw {self.buffer.count(marker)} of {count} {marker!r}")
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buffer += chunk
        return self.buffer

    def read_all(self, timeout: float = 30.0) -> bytes:
        """Read until the server closes the connection."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                return self.buffer
            self.buffer += chunk

    def close(self) -> None:
        """Vanish: close the socket without reading the rest."""
        self.sock.close()
