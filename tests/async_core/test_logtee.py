"""The log entry of an event, and back: what a resume reads is what the run produced."""

from __future__ import annotations

import pytest

from async_core._logtee import from_entry, to_entry
from async_core.streamlog import Entry, EventId
from async_core.wire import Delta, Done, Error, Event, State, make_encoder
from async_core.wire import StreamMeta as WireMeta

EVENTS: list[Event] = [
    Delta(1, "Hé\u2028llo", 1),
    State(2, {"step": 1, "seq": "theirs", "event": "x"}),
    Done(3, "length", 7, 1.5, 20.25, "conv-1", {"prompt_tokens": 1, "completion_tokens": 7,
                                               "total_tokens": 8}),
    Error(3, "idle_timeout", "no output for 30 s", True),
]
META = WireMeta(stream_id="s", conversation_id="conv-1", model="m", created=0.0)


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("position", [(0, "memory"), (9, "redis")], ids=lambda p: p[1])
def test_an_event_survives_the_log_with_its_seq(event: Event,
                                                position: tuple[int, str]) -> None:
    """Memory ids are ``seq-0``, Redis ids ``fence-seq``: either way the same event and
    the same bytes come back (SSE and NDJSON)."""
    fence = position[0]
    eid = EventId("e1", event.seq, 0) if fence == 0 else EventId("e1", fence, event.seq)
    kind, data = to_entry(event)
    back = from_entry(Entry(eid, kind, data))
    assert back == event
    for fmt in ("sse", "ndjson"):
        assert (make_encoder(fmt, META).encode(back, "x-1")
                == make_encoder(fmt, META).encode(event, "x-1"))


def test_entries_of_other_producers_read_with_defaults() -> None:
    """The sweeper's ``interrupted`` error and a producer's flat state entry decode."""
    swept = from_entry(Entry(EventId("e1", 4, 0), "error", {"code": "interrupted",
                                                            "message": "m",
                                                            "retryable": True}))
    assert swept == Error(4, "interrupted", "m", True)
    state = from_entry(Entry(EventId("e1", 3, 2), "state", {"tool": "search"}))
    assert state == State(2, {"tool": "search"})
