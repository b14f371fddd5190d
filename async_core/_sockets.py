"""How much a client that stopped reading can take before our writes block.

A write to a client only blocks once the kernel's send buffer for that connection
is full. Linux autotunes that buffer up to ``net.ipv4.tcp_wmem`` (4 MB by default),
so a stalled client could absorb megabytes before the send timeout even started to
count, and every byte of it was also kept in the stream's transcript: measured,
50 stalled clients were released 6.6-8.7 s after they stopped reading (send
timeout 2 s) and the server grew 7-11 MB per stalled stream (issue 10, item 5).

Connections inherit ``SO_SNDBUF`` from the listening socket they were accepted on,
and a set value turns autotuning off for them; so every server of ours sets it
once, on its listening sockets (uvicorn in ``_serve.py``, gunicorn in its
``post_worker_init`` hooks). The kernel doubles the value it is given (its
bookkeeping overhead), which the figures in docs/ARCHITECTURE.md include.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Iterable
from typing import Any


def bound_send_buffer(sock: Any, nbytes: int) -> None:
    """Set ``SO_SNDBUF`` of a listening TCP socket, for the connections it accepts.

    Args:
        sock: a ``socket.socket``, or an object wrapping one as ``.sock`` (gunicorn's
            listeners).
        nbytes: the send buffer per connection; 0 (or less) keeps the kernel's
            autotuning.
    """
    if nbytes <= 0:
        return
    raw = getattr(sock, "sock", sock)
    if raw.family in (socket.AF_INET, socket.AF_INET6):
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, nbytes)


def gunicorn_worker_started(listeners: Iterable[Any], send_buffer: int) -> None:
    """What every gunicorn worker of ours does first (the ``post_worker_init`` of both
    gunicorn configs, legacy and hybrid).

    Shows streambridge's log lines in gunicorn's log (unless logging is configured
    already), and bounds the send buffer of each listener.

    Args:
        listeners: the worker's listening sockets (``worker.sockets``).
        send_buffer: ``Settings.socket_send_buffer``.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="[%(process)d] [%(name)s] %(levelname)s %(message)s")
    for listener in listeners:
        bound_send_buffer(listener, send_buffer)
