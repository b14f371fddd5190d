"""The cancel token of a sync agent run (``AgentRequest.cancel`` on the legacy side)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ._glue import Signal, ThreadGlue

log = logging.getLogger("streambridge.legacy")


class CancelSignal:
    """The ``CancelToken`` of one sync agent run: set when its stream is over."""

    def __init__(self, glue: ThreadGlue) -> None:
        self._signal = Signal(glue)
        self._lock = glue.allocate_lock()  # guards _callbacks; never held while waiting
        self._callbacks: list[Callable[[], object]] = []

    def is_set(self) -> bool:
        return self._signal.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._signal.wait(timeout)

    def add_callback(self, fn: Callable[[], object]) -> None:
        with self._lock:
            if not self._signal.is_set():
                self._callbacks.append(fn)
                return
        _call_quietly(fn)

    def set(self) -> None:
        with self._lock:
            callbacks, self._callbacks = self._callbacks, []
        self._signal.set()
        for fn in callbacks:
            _call_quietly(fn)


def _call_quietly(fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception:
        log.exception("cancel callback %r failed", fn)
