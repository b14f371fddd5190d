"""Resume, cancel, background runs and the disconnect policies, on every path (memory log).

One server per path for the module (two tenants' keys, at most 3 detached runs), and one
with a reconnect grace for the grace tests. Every stream here is a probe agent, so a test
can tell from its probe file whether (and when) the agent's ``finally`` ran.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.clients import metric, wait_for
from tests.contract.test_auth import ACME, GLOBEX, KEYS, bearer
from tests.probe_agents import probe_text, read_probe
from tests.reaper import REAPER
from tests.servers import Server

AUTH = bearer(ACME)


@pytest.fixture(scope="module")
def srv(path_id: str) -> Iterator[Server]:
    """A server with two tenants and at most 3 detached runs at once."""
    server = Server(path_id, {"STREAMBRIDGE_API_KEYS": KEYS,
                              "STREAMBRIDGE_MAX_BACKGROUND": "3"})
    yield server
    REAPER.retire(server, __name__)  # waited for, and its log read, at the module's end


@pytest.fixture(scope="module")
def grace_srv(path_id: str) -> Iterator[Server]:
    """A server whose ``cancel`` streams wait 1 s for a reader to come back, and whose
    leases live 1 s unless renewed (so a longer stream needs its renewals)."""
    server = Server(path_id, {"STREAMBRIDGE_RECONNECT_GRACE": "1",
                              "STREAMBRIDGE_LEASE_TTL": "1", "STREAMBRIDGE_LEASE_RENEW": "0.2"})
    yield server
    REAPER.retire(server, __name__)  # waited for, and its log read, at the module's end


def probe_file() -> str:
    """A fresh file for one probe agent's record."""
    fd, path = tempfile.mkstemp(prefix="sb-probe-", suffix=".jsonl")
    os.close(fd)
    os.unlink(path)
    return path


def body(tokens: int, interval_ms: int = 5, probe: str | None = None,
         **fields: Any) -> dict[str, Any]:
    """A native chat body for the probe agent."""
    options: dict[str, Any] = {"tokens": tokens, "interval_ms": interval_ms}
    if probe:
        options["probe_file"] = probe
    return {"message": "hi", "agent": "probe", "options": options, **fields}


def sse_events(lines: list[str]) -> list[dict[str, Any]]:
    """The events of SSE lines: ``{"id", "event", "data"}`` each (comments skipped)."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in lines:
        if not line:
            if "event" in current:
                out.append(current)
            current = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            current[name] = json.loads(value) if name == "data" else value
    return out


def cut(server: Server, request: dict[str, Any], deltas: int,
        headers: dict[str, str] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """POST ``request``, read ``deltas`` delta events, then drop the connection."""
    lines: list[str] = []
    with httpx.stream("POST", server.url("/v1/chat"), json=request, timeout=10,
                      headers=headers) as r:
        assert r.status_code == 200, r.read()
        stream_id = r.headers["x-stream-id"]
        for line in r.iter_lines():
            lines.append(line)
            if not line and sum(e["event"] == "delta" for e in sse_events(lines)) >= deltas:
                break
    return stream_id, sse_events(lines)


def resume(server: Server, stream_id: str, *, headers: dict[str, str] | None = None,
           params: dict[str, str] | None = None) -> httpx.Response:
    """Read ``GET /v1/streams/{id}`` to its end."""
    return httpx.get(server.url(f"/v1/streams/{stream_id}"), headers=headers,
                     params=params, timeout=15)


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["data"]["text"] for e in events if e["event"] == "delta")


def positions(events: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """The position part of each event id (``tag-epoch-major-minor``)."""
    return [tuple(int(n) for n in e["id"].split("-")[2:]) for e in events]  # type: ignore[misc]


def test_a_cut_continue_stream_runs_on_and_a_resume_gives_the_rest_once(srv: Server) -> None:
    """on_disconnect=continue: cut at a random point, resume with Last-Event-ID (SSE) and
    with ?cursor= (NDJSON): the whole text, in order, nothing repeated; the agent ran to
    its end although its client had left."""
    probe, tokens = probe_file(), 60
    sid, seen = cut(srv, body(tokens, 5, probe, on_disconnect="continue"),
                    random.randint(1, 30), AUTH)
    rest = resume(srv, sid, headers={**AUTH, "Last-Event-ID": seen[-1]["id"]})
    assert rest.status_code == 200 and rest.headers["x-stream-id"] == sid
    after = sse_events(rest.text.splitlines())
    assert text_of(seen) + text_of(after) == probe_text(tokens)
    ids = positions(seen + after)
    assert ids == sorted(set(ids)), "ids increase and none is repeated"
    assert after[-1]["event"] == "done"
    assert wait_for(lambda: read_probe(probe))[0]["produced"] == tokens
    nd = resume(srv, sid, headers={**AUTH, "Accept": "application/x-ndjson"},
                params={"cursor": seen[0]["id"]})
    lines = [json.loads(line) for line in nd.text.splitlines()]
    nd_ids = [line["id"] for line in lines if line["event"] != "ping"]
    assert nd_ids == [e["id"] for e in seen[1:] + after]
    assert len(read_probe(probe)) == 1, "a resume never starts a second generation"
    # Behind the hybrid front resumes are served by the native app (one shared log).
    expected = "legacy" if srv.path_id.startswith("legacy") else "async"
    assert rest.headers["x-stream-path"] == expected


def test_several_readers_follow_one_stream_at_once(srv: Server) -> None:
    """Two tabs reading one running stream get the same events, whole and in order."""
    r = httpx.post(srv.url("/v1/chat"), json=body(40, 10, background=True), headers=AUTH,
                   timeout=10)
    with ThreadPoolExecutor(2) as pool:
        reads = list(pool.map(lambda _: resume(srv, r.json()["stream_id"], headers=AUTH),
                              range(2)))
    first, second = (sse_events(x.text.splitlines()) for x in reads)
    assert first == second and text_of(first) == probe_text(40)
    assert first[-1]["event"] == "done"


def test_a_finished_stream_replays_to_its_terminal_event(srv: Server) -> None:
    """A resume without a cursor replays the same events with the same ids; one from the
    terminal event's id gets nothing more and ends."""
    r = httpx.post(srv.url("/v1/chat"), json=body(8), headers=AUTH, timeout=10)
    original = sse_events(r.text.splitlines())
    replay = resume(srv, r.headers["x-stream-id"], headers=AUTH)
    assert replay.status_code == 200
    assert sse_events(replay.text.splitlines()) == original
    assert original[-1]["event"] == "done"
    last = resume(srv, r.headers["x-stream-id"],
                  headers={**AUTH, "Last-Event-ID": original[-1]["id"]})
    assert last.status_code == 200 and sse_events(last.text.splitlines()) == []


def test_a_cursor_of_another_epoch_gets_an_explicit_reset(srv: Server) -> None:
    """A cursor the log cannot serve: a ``reset`` event (reason, conversation), then the
    stream from the oldest entry kept: never a silent gap."""
    r = httpx.post(srv.url("/v1/chat"), json=body(4), headers=AUTH, timeout=10)
    events = sse_events(r.text.splitlines())
    tag = events[0]["id"].split("-")[0]
    got = sse_events(resume(srv, r.headers["x-stream-id"],
                            headers={**AUTH, "Last-Event-ID": f"{tag}-zz0-1-0"}).text.splitlines())
    assert got[0]["event"] == "reset"
    assert got[0]["data"] == {"reason": "epoch",
                              "conversation_id": r.headers["x-conversation-id"]}
    assert got[1:] == events


def test_bad_cursors_are_400_and_unknown_or_foreign_streams_404(srv: Server) -> None:
    """Malformed, huge or another stream's cursor: 400 naming it; an unknown stream and
    another tenant's stream: 404 for reads and cancels."""
    a = httpx.post(srv.url("/v1/chat"), json=body(2), headers=AUTH, timeout=10)
    b = httpx.post(srv.url("/v1/chat"), json=body(2), headers=AUTH, timeout=10)
    foreign = sse_events(b.text.splitlines())[0]["id"]
    sid = a.headers["x-stream-id"]
    for bad in ("nonsense", "x" * 500, foreign):
        for how in ({"headers": {**AUTH, "Last-Event-ID": bad}},
                    {"headers": AUTH, "params": {"cursor": bad}}):
            r = resume(srv, sid, **how)  # type: ignore[arg-type]
            assert r.status_code == 400, (bad, r.text)
            assert r.json()["error"]["code"] == "bad_cursor"
            assert "cursor" in r.json()["error"]["message"]
    for stream_id, key in (("0" * 32, ACME), (sid, GLOBEX)):
        r = resume(srv, stream_id, headers=bearer(key))
        assert r.status_code == 404 and r.json()["error"]["code"] == "stream_not_found"
        c = httpx.post(srv.url(f"/v1/streams/{stream_id}/cancel"), headers=bearer(key),
                       timeout=10)
        assert c.status_code == 404, c.text
    assert resume(srv, sid).status_code == 401
    assert metric(srv.base_url, "streambridge_resumes_total", result="gone") >= 2


def test_cancel_from_a_second_connection_stops_the_agent(srv: Server) -> None:
    """The reader gets ``error`` ``cancelled``, the agent's ``finally`` ran early; a second
    cancel and a cancel of the finished stream answer 200 with the same outcome."""
    probe, tokens = probe_file(), 500
    lines: list[str] = []
    with httpx.stream("POST", srv.url("/v1/chat"), json=body(tokens, 10, probe),
                      headers=AUTH, timeout=10) as r:
        sid, it = r.headers["x-stream-id"], r.iter_lines()
        for line in it:
            lines.append(line)
            if line.startswith("event: delta") and len(lines) > 8:
                break
        t0 = time.monotonic()
        c = httpx.post(srv.url(f"/v1/streams/{sid}/cancel"), headers=AUTH, timeout=10)
        lines += list(it)
    assert c.status_code == 200, c.text
    assert c.json() == {"stream_id": sid, "status": "error", "outcome": "cancelled",
                        "cancel_requested": True}
    events = sse_events(lines)
    assert events[-1]["event"] == "error" and events[-1]["data"]["code"] == "cancelled"
    record = wait_for(lambda: read_probe(probe))[0]
    assert record["produced"] < tokens
    assert time.monotonic() - t0 < 5
    for _ in range(2):
        again = httpx.post(srv.url(f"/v1/streams/{sid}/cancel"), headers=AUTH, timeout=10)
        assert again.status_code == 200 and again.json()["outcome"] == "cancelled"
    done = httpx.post(srv.url("/v1/chat"), json=body(2), headers=AUTH, timeout=10)
    finished = httpx.post(srv.url(f"/v1/streams/{done.headers['x-stream-id']}/cancel"),
                          headers=AUTH, timeout=10)
    assert finished.status_code == 200
    assert finished.json()["status"] == "done" and finished.json()["outcome"] == "completed"
    assert metric(srv.base_url, "streambridge_cancel_latency_seconds_count") >= 1
    assert metric(srv.base_url, "streambridge_log_append_seconds_count", op="finish") >= 3


def test_background_runs_answer_202_and_are_read_from_their_location(srv: Server) -> None:
    """``background: true``: 202 with the ids and a Location; GET there reads the whole
    stream; a fourth run over the limit of 3 is 503 with Retry-After."""
    r = httpx.post(srv.url("/v1/chat"), json=body(20, 5, background=True), headers=AUTH,
                   timeout=10)
    assert r.status_code == 202, r.text
    answer = r.json()
    assert answer["stream_id"] == r.headers["x-stream-id"]
    assert r.headers["location"] == f"/v1/streams/{answer['stream_id']}"
    assert answer["conversation_id"] == r.headers["x-conversation-id"]
    got = sse_events(httpx.get(srv.url(r.headers["location"]), headers=AUTH,
                               timeout=15).text.splitlines())
    assert text_of(got) == probe_text(20) and got[-1]["event"] == "done"
    long_runs = [httpx.post(srv.url("/v1/chat"), json=body(1000, 10, background=True),
                            headers=AUTH, timeout=10) for _ in range(3)]
    try:
        assert [x.status_code for x in long_runs] == [202, 202, 202]
        over = httpx.post(srv.url("/v1/chat"), json=body(5, background=True), headers=AUTH,
                          timeout=10)
        assert over.status_code == 503 and "retry-after" in over.headers
        assert "STREAMBRIDGE_MAX_BACKGROUND" in over.json()["error"]["message"]
        assert metric(srv.base_url, "streambridge_background_runs") == 3
    finally:
        for x in long_runs:
            httpx.post(srv.url(f"/v1/streams/{x.json()['stream_id']}/cancel"), headers=AUTH,
                       timeout=10)


@pytest.mark.parametrize("field", [{"on_disconnect": "later"}, {"on_disconnect": 3},
                                   {"background": "yes"}])
def test_bad_disconnect_policy_or_background_values_are_400(srv: Server,
                                                            field: dict[str, Any]) -> None:
    """A bad ``on_disconnect`` or ``background`` is a 400 naming the field."""
    r = httpx.post(srv.url("/v1/chat"), json=body(2, **field), headers=AUTH, timeout=10)
    assert r.status_code == 400
    assert next(iter(field)) in r.json()["error"]["message"]


def test_a_resume_within_the_grace_keeps_the_stream_alive(grace_srv: Server) -> None:
    """RECONNECT_GRACE: a reader that comes back in time reads the rest; the run was
    never stopped (and outlived its lease TTL: renewed)."""
    probe, tokens = probe_file(), 150
    sid, seen = cut(grace_srv, body(tokens, 10, probe), 3)
    rest = sse_events(resume(grace_srv, sid,
                             headers={"Last-Event-ID": seen[-1]["id"]}).text.splitlines())
    assert text_of(seen) + text_of(rest) == probe_text(tokens)
    assert rest[-1]["event"] == "done"
    assert wait_for(lambda: read_probe(probe))[0]["produced"] == tokens


def test_with_no_reader_back_the_stream_stops_after_the_grace(grace_srv: Server) -> None:
    """RECONNECT_GRACE: with no reader back, the agent is stopped once the grace passed,
    and the log ends with a terminal ``error``."""
    probe, tokens = probe_file(), 1000
    t0 = time.time()
    sid, _ = cut(grace_srv, body(tokens, 10, probe), 3)
    record = wait_for(lambda: read_probe(probe), timeout=10)[0]
    assert record["produced"] < tokens
    assert 0.9 <= record["t"] - t0 < 6
    end = sse_events(resume(grace_srv, sid).text.splitlines())[-1]
    assert end["event"] == "error" and end["data"]["code"] == "client_disconnected"

