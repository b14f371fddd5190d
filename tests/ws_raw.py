"""A WebSocket client that reads only when told to: ``websockets``' sans-IO protocol on a
plain socket, for the tests that need to see protocol frames (pings) or to stop reading.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri


class RawSocket:
    """One client connection to ``/v1/ws`` whose reads and pongs are explicit.

    Args:
        port: the server's port on 127.0.0.1.
        headers: extra handshake headers (``Authorization``).
        rcvbuf: the socket's receive buffer (small: a stalled reader stalls soon).
    """

    def __init__(self, port: int, headers: dict[str, str] | None = None,
                 rcvbuf: int | None = None) -> None:
        self.proto = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/v1/ws"), max_size=None)
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        request = self.proto.connect()
        for name, value in (headers or {}).items():
            request.headers[name] = value
        self.proto.send_request(request)
        self.flush()
        while self.proto.state is State.CONNECTING:
            self.proto.receive_data(self.sock.recv(65536))
        self.frames: list[Frame] = []
        self._collect()

    def flush(self) -> None:
        """Send what the protocol has to send (requests, messages, pongs, a close reply:
        the server may be gone by then, which is no error)."""
        try:
            self.sock.sendall(b"".join(self.proto.data_to_send()))
        except OSError:
            if self.proto.close_rcvd is None:
                raise

    def send(self, message: dict[str, Any]) -> None:
        """Send one JSON text message."""
        self.proto.send_text(json.dumps(message).encode())
        self.flush()

    def read_for(self, seconds: float) -> None:
        """Read and answer (pongs) for ``seconds``, or until the connection ends."""
        deadline = time.monotonic() + seconds
        while self.proto.close_rcvd is None and (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(max(left, 0.01))
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                break
            if not data:
                break
            self.proto.receive_data(data)
            self._collect()
            self.flush()

    def read_to_close(self, timeout: float = 15) -> int | None:
        """Read until the server's close frame; return its code (None: dropped without)."""
        self.read_for(timeout)
        return None if self.proto.close_rcvd is None else self.proto.close_rcvd.code

    def messages(self) -> list[dict[str, Any]]:
        """The JSON text messages received so far."""
        return [json.loads(f.data) for f in self.frames if f.opcode is Opcode.TEXT]

    def pings(self) -> int:
        """How many protocol pings were received."""
        return sum(f.opcode is Opcode.PING for f in self.frames)

    def close(self) -> None:
        """Drop the TCP connection."""
        self.sock.close()

    def _collect(self) -> None:
        self.frames += [e for e in self.proto.events_received() if isinstance(e, Frame)]
