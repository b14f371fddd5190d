"""The Celery app of the worker tests: one task that streams a sync agent into the log.

Started by ``tests/cluster/processes.py`` as a real ``celery worker`` (threads pool,
Redis broker from ``SB_TEST_BROKER_URL``); the log is ``STREAMBRIDGE_REDIS_URL`` as the
servers read it. The task is what the README's Celery example shows.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from async_core import AgentRequest
from async_core.streamlog import Publisher, publish_agent
from tests.probe_agents import probe_sync

app = Celery("sbtest", broker=os.environ.get("SB_TEST_BROKER_URL", "redis://127.0.0.1:6379/1"))
app.conf.update(task_acks_late=False, worker_prefetch_multiplier=1,
                broker_connection_retry_on_startup=True, task_ignore_result=True)
_publisher: Publisher | None = None


def publisher() -> Publisher:
    """The worker's one publisher (settings from the ``STREAMBRIDGE_*`` environment)."""
    global _publisher
    if _publisher is None:
        _publisher = Publisher()
    return _publisher


@app.task(name="sbtest.stream_agent")
def stream_agent(stream_id: str, tenant: str, message: str, options: dict[str, Any]) -> str:
    """Stream the probe agent's reply to ``message`` as stream ``stream_id``."""
    request = AgentRequest(messages=({"role": "user", "content": message},),
                           options=options, conversation_id=f"conv-{stream_id}")
    stream = publish_agent(publisher(), probe_sync, request, stream_id=stream_id,
                           tenant=tenant)
    return stream.outcome or ""
