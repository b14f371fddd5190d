"""Webhooks: the final response of every stream, posted to configured endpoints.

Rows enter the outbox in the transaction that stores the final transcript
(``store``); ``DeliveryWorker`` sends them in the background with Standard
Webhooks signatures, retries with jittered exponential backoff, dead-letters,
honours ``410 Gone`` and refuses non-public addresses (``_ssrf``). Nothing here
is on a stream's path: streaming never waits for a webhook.
"""

from __future__ import annotations

from ._config import WebhookConfig, WebhookConfigError
from ._payload import deliveries
from ._ssrf import Target, UrlRefused, parse_allowlist, refusal, resolve
from ._worker import DeliveryWorker

__all__ = [
    "DeliveryWorker",
    "Target",
    "UrlRefused",
    "WebhookConfig",
    "WebhookConfigError",
    "deliveries",
    "parse_allowlist",
    "refusal",
    "resolve",
]
