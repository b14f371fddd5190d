"""The socket relays each native NDJSON frame as ``{"stream_id","id","event","data"}``
without decoding and re-encoding it (``async_core/_ws.py`` ``_relay``): the message
must mean exactly what the decoded frame means, for any event hypothesis picks."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from async_core._ws import _relay
from async_core.wire import Delta, Done, Error, State, StreamMeta, make_encoder

SID = "0123456789abcdef0123456789abcdef"
HEAD = '{"stream_id":' + json.dumps(SID) + ',"id":"'
ENCODER = make_encoder("ndjson", StreamMeta(stream_id=SID, conversation_id="c", model="m",
                                                  created=0))
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ['"}', '\\', '","id":"x', '\u2028', '}\n{', '"data":{'])
json_values = st.recursive(st.none() | st.booleans() | st.integers() | texts,
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(texts, inner, max_size=3), max_leaves=8)
events = st.one_of(
    st.builds(Delta, seq=st.integers(0, 10**6), text=texts, tokens=st.integers(0, 99)),
    st.builds(State, seq=st.integers(0, 10**6),
              data=st.dictionaries(texts | st.sampled_from(["id", "event", "seq"]),
                                   json_values, max_size=4)),
    st.builds(Done, seq=st.integers(0, 10**6), finish_reason=st.just("stop"),
              tokens=st.integers(0, 99), ttfc_ms=st.none() | st.floats(0, 1e4),
              duration_ms=st.floats(0, 1e4), conversation_id=texts),
    st.builds(Error, seq=st.integers(0, 10**6), code=texts, message=texts,
              retryable=st.booleans()))


def _decoded(frame: bytes) -> dict[str, Any]:
    """What the frame means, read the slow way (as the socket did before ``_relay``)."""
    event = json.loads(frame)
    name, event_id = event.pop("event"), event.pop("id", None)
    event.pop("seq", None)
    return {"stream_id": SID, "id": event_id, "event": name, "data": event}


@settings(max_examples=100, deadline=None)
@given(events, st.none() | st.sampled_from(["ab12-3-0-7", "ab12-3-10-0", "x"]))
def test_a_relayed_frame_means_what_the_decoded_frame_means(event: Any,
                                                           event_id: str | None) -> None:
    frame = ENCODER.encode(event, event_id)
    message = _relay(SID, HEAD, frame)
    assert json.loads(message) == _decoded(frame)
    assert message.isascii()  # as the NDJSON it came from: no line splitter can cut it


def test_a_heartbeat_frame_is_relayed_as_a_stream_ping() -> None:
    assert json.loads(_relay(SID, HEAD, ENCODER.heartbeat())) == {
        "stream_id": SID, "id": None, "event": "ping", "data": {}}
