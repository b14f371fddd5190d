"""The webhook receiver of the tests: ``async_core.harness.WebhookReceiver`` (a real HTTP
server on 127.0.0.1 in a thread), under the tests' names."""

from __future__ import annotations

from async_core.harness import WEBHOOK_SECRET as SECRET
from async_core.harness import WebhookReceiver as Receiver

__all__ = ["SECRET", "Receiver"]
