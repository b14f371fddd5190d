"""What a webhook says: one event per finished stream, as an outbox row."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._records import StreamRecord


def deliveries(record: StreamRecord, *, tenant: str, outcome: str,
               urls: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    """The outbox rows announcing ``record`` to each of ``urls`` (one ``webhook-id`` each)."""
    info = record.info
    event_type = f"turn.{outcome}"
    body = {
        "type": event_type,
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "data": {
            "stream_id": info.stream_id, "conversation_id": info.conversation_id,
            "tenant": tenant, "agent": info.agent, "path": info.path,
            "outcome": outcome, "reason": record.outcome.value, "text": record.text,
            "tokens": record.tokens, "usage": record.usage, "error_code": record.error_code,
            "duration_ms": round(record.duration * 1000, 3),
            "ttfc_ms": None if record.ttfc is None else round(record.ttfc * 1000, 3),
        },
    }
    payload = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    now = time.time()
    return tuple({"id": f"msg_{uuid.uuid4().hex}", "url": url, "event_type": event_type,
                  "payload": payload, "status": "pending", "attempts": 0,
                  "next_attempt_at": now, "lease_until": None, "last_error": None,
                  "created_at": now, "finished_at": None} for url in urls)
