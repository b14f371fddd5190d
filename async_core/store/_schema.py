"""The tables, as SQLAlchemy Core objects (the migrations create the same schema).

    conversations   one row per conversation, owned by one tenant
    turns           the messages of each stream: the user turn(s) it was asked,
                    then its assistant turn (checkpointed while streaming)
    webhook_endpoints  configured endpoints and whether 410 Gone disabled them
    webhook_outbox  one row per (finished stream, endpoint): the delivery queue

Times are Unix seconds (floats), so both databases compare them the same way.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

conversations = Table(
    "conversations", metadata,
    Column("id", String(128), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

turns = Table(
    "turns", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("conversation_id", String(128), ForeignKey("conversations.id", ondelete="CASCADE"),
           nullable=False),
    Column("stream_id", String(64), nullable=False),
    Column("position", Integer, nullable=False),  # order within the stream
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False),
    # in_progress (checkpointed), completed, interrupted, failed
    Column("outcome", String(32), nullable=False),
    Column("reason", String(32), nullable=True),  # the engine's outcome, e.g. idle_timeout
    Column("agent", String(128), nullable=False),
    Column("tokens", Integer, nullable=False),
    Column("writer", String(255), nullable=True),  # host:pid of an in_progress checkpoint
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("stream_id", "position", name="uq_turns_stream_position"),
    Index("ix_turns_conversation", "conversation_id", "id"),
)

webhook_endpoints = Table(
    "webhook_endpoints", metadata,
    Column("url", String(2048), primary_key=True),
    Column("disabled_at", Float, nullable=True),
    Column("disabled_reason", String(255), nullable=True),
)

webhook_outbox = Table(
    "webhook_outbox", metadata,
    Column("id", String(64), primary_key=True),  # the webhook-id: the idempotency key
    Column("url", String(2048), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    # pending -> delivered | dead | disabled
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("lease_until", Float, nullable=True),  # a claimed row; expires if its worker died
    Column("last_error", String(512), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Index("ix_outbox_due", "status", "next_attempt_at"),
)
