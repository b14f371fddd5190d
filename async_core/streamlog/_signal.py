"""The cancel flag of a published stream, as a sync agent's ``CancelToken``.

(``legacy_bridge`` has its own, on its gevent-aware glue; ``async_core`` may not import
it, and a producer outside the server needs only ``threading``.)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("streambridge.streamlog")


class CancelSignal:
    """The stream's cancel flag as a sync agent's ``CancelToken`` (threads or greenlets).

    Set by the watcher thread when a cancel intent reaches this process (or the lease
    is lost); reading it is a flag check, never a round trip.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], object]] = []

    def is_set(self) -> bool:
        """True once the stream was cancelled."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds, returning early (True) on cancel."""
        return self._event.wait(timeout)

    def add_callback(self, fn: Callable[[], object]) -> None:
        """Call ``fn`` once on cancel (at once if already cancelled), from any thread."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(fn)
                return
        fn()

    def set(self) -> None:
        """Cancel: wake every waiter and run the callbacks once."""
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn()
            except Exception:
                log.exception("cancel callback %r failed", fn)
