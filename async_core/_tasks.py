"""Stopping a task without swallowing a cancellation aimed at the one who stops it.

The usual idiom::

    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

also swallows a ``CancelledError`` that was meant for the *awaiting* task (the
server cancelling a request, a timeout scope closing): it then carries on as if
nothing happened, and the cancellation is lost (issue 10, item 11).
:func:`cancel_and_wait` tells the two apart with ``Task.cancelling()``: the
awaiting task's own pending cancellation requests are counted there, the
stopped task's are not.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has ended.

    The ``CancelledError`` that ends ``task`` is absorbed; one aimed at the
    caller's own task (``asyncio.current_task().cancelling() > 0``) is re-raised,
    after ``task`` has ended. Any other exception ``task`` ended with propagates,
    as it would from ``await task``.

    Args:
        task: the task (or future) to stop; it may already be done.

    Raises:
        asyncio.CancelledError: the calling task itself is being cancelled.
    """
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling() > 0:
            raise
