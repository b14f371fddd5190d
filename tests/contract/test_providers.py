"""Real upstreams through every path: the ``ollama`` and ``openai`` agents against the fake.

Each path runs both forms of the provider agents: its own (``native``: sync twins
on ``requests`` on the legacy path, async twins on ``httpx`` on the async path) and
the crossing (``crossed``: ``STREAMBRIDGE_AGENT_FORM`` flips it, so async twins run
on the legacy worker's loop and sync twins run through the janus bridge on the
async path). The fake upstream records the ``User-Agent``, which proves which
twin ran, and when our server closed each upstream connection.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.clients import RawStream, stream
from tests.fake_upstream import FakeUpstream, fake
from tests.reaper import REAPER
from tests.servers import Server, uvloop_path_ids

FORMS = ("native", "crossed")
# Short policy timeouts keep the module fast; the upstream backstops sit outside them.
POLICY = {
    "STREAMBRIDGE_FIRST_CHUNK_TIMEOUT": "3",
    "STREAMBRIDGE_IDLE_TIMEOUT": "0.8",
    "STREAMBRIDGE_RETRIES": "2",
    "STREAMBRIDGE_RETRY_BACKOFF": "0.05",
    "STREAMBRIDGE_UPSTREAM_CONNECT_TIMEOUT": "2",
    "STREAMBRIDGE_UPSTREAM_FIRST_CHUNK_TIMEOUT": "5",
    "STREAMBRIDGE_UPSTREAM_IDLE_TIMEOUT": "2",
}
WORDS = ["The ", "quick ", "brown ", "fox ", "jumps ", "over ", "the ", "lazy "]
_keys = itertools.count()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    """One fake upstream for the whole module (requests are told apart by key)."""
    fake_upstream = FakeUpstream()
    yield fake_upstream
    fake_upstream.stop()


# Crossings on the pure paths; the hybrid front's branches are those same paths. The
# async path also runs on uvloop (issue 16 item 0).
VARIANTS = [(p, f) for p in uvloop_path_ids() for f in FORMS
            if f == "native" or not p.startswith("hybrid")]


@pytest.fixture(scope="module", params=VARIANTS, ids=[f"{p}-{f}" for p, f in VARIANTS])
def variant(request: pytest.FixtureRequest) -> tuple[str, str]:
    """A serving path and which twin runs there."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def path_id(variant: tuple[str, str]) -> str:
    """The serving path (overrides conftest's, which has no form)."""
    return variant[0]


@pytest.fixture(scope="module")
def form(variant: tuple[str, str]) -> str:
    """Which twin runs: the path's own (``native``), or the other one (``crossed``)."""
    return variant[1]


def _env(path_id: str, form: str, upstream: FakeUpstream, **extra: str) -> dict[str, str]:
    env = {**upstream.env(), **POLICY, **extra}
    if form == "crossed":
        env["STREAMBRIDGE_AGENT_FORM"] = "async" if path_id.startswith("legacy") else "sync"
    return env


@pytest.fixture(scope="module")
def proxy(path_id: str, form: str, upstream: FakeUpstream) -> Iterator[Server]:
    """A server of the current path and form, pointed at the fake upstream."""
    srv = Server(path_id, _env(path_id, form, upstream))
    yield srv
    REAPER.retire(srv, __name__)  # waited for, and its log read, at the module's end


def _twin(path_id: str, form: str, served: str) -> str:
    """The HTTP library of the twin that should have run (``served``: X-Stream-Path)."""
    if form == "crossed":
        return "httpx" if path_id.startswith("legacy") else "requests"
    return "requests" if served == "legacy" else "httpx"


def _ask(agent: str, **script: Any) -> tuple[str, dict[str, Any]]:
    key = f"k{next(_keys)}-{time.monotonic_ns()}"
    body = {"agent": agent, "messages": [{"role": "user", "content": fake(key=key, **script)}]}
    return key, body


def _terminal(r: Any) -> dict[str, Any]:
    assert r.kinds().count("done") + r.kinds().count("error") == 1, r.kinds()
    return dict(json.loads(r.events[-1].data))


@pytest.mark.parametrize("agent", ["ollama", "openai"])
def test_normal_stream_passes_text_and_usage_through(
        proxy: Server, upstream: FakeUpstream, path_id: str, form: str, agent: str) -> None:
    """Deltas carry the upstream's text; done carries its token counts; the twin is right."""
    key, body = _ask(agent, tokens=6, pace_ms=5)
    r = stream(proxy.url("/v1/chat"), body)
    assert r.status == 200
    assert r.kinds()[-1] == "done"
    assert r.text() == "".join(WORDS[:6])
    usage = _terminal(r)["usage"]
    assert usage["completion_tokens"] == 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + 6 and usage["prompt_tokens"] > 0
    (record,) = upstream.records(key)
    twin = _twin(path_id, form, r.headers["X-Stream-Path"])
    assert record["user_agent"].endswith(twin)


def test_slow_first_token_is_covered_by_heartbeats(proxy: Server) -> None:
    """An upstream that thinks for 0.8 s: heartbeats flow, then the whole stream."""
    _, body = _ask("openai", tokens=3, first_token_delay_ms=800)
    r = stream(proxy.url("/v1/chat"), body)
    assert r.raw.count(b": ping") >= 2
    assert r.raw.index(b": ping") < r.raw.index(b"event: delta")
    assert r.text() == "".join(WORDS[:3]) and r.kinds()[-1] == "done"


def test_upstream_stall_ends_in_idle_timeout_and_closes_upstream(
        proxy: Server, upstream: FakeUpstream) -> None:
    """Silence after 2 tokens: error idle_timeout in-band, and the upstream is hung up on."""
    key, body = _ask("ollama", tokens=6, pace_ms=5, stall_at=2)
    r = stream(proxy.url("/v1/chat"), body)
    ended = time.time()
    assert r.text() == "".join(WORDS[:2])
    assert _terminal(r)["code"] == "idle_timeout"
    records = upstream.wait_records(key, lambda rs: rs and rs[0]["client_closed"])
    assert records[0]["client_closed"] - ended < 1.0


@pytest.mark.parametrize("agent", ["ollama", "openai"])
def test_upstream_drop_mid_stream_is_an_in_band_error(proxy: Server, agent: str) -> None:
    """The upstream closes after 3 tokens: those 3, then error upstream_disconnected."""
    _, body = _ask(agent, tokens=6, pace_ms=5, drop_at=3)
    r = stream(proxy.url("/v1/chat"), body)
    assert r.text() == "".join(WORDS[:3])
    error = _terminal(r)
    assert error["code"] == "upstream_disconnected"
    assert agent in error["message"]


def test_503_then_success_is_one_clean_stream(proxy: Server, upstream: FakeUpstream) -> None:
    """A 503 before the first byte is retried: the client sees one ordinary stream."""
    key, body = _ask("openai", tokens=4, status=503, fail_times=1)
    r = stream(proxy.url("/v1/chat"), body)
    assert r.kinds() == ["delta"] * (len(r.kinds()) - 1) + ["done"]
    assert r.text() == "".join(WORDS[:4])
    assert [rec["status"] for rec in upstream.records(key)] == [503, 200]


def test_429_retry_after_is_honoured(proxy: Server, upstream: FakeUpstream) -> None:
    """A 429 with Retry-After: 1 is retried no sooner than 1 s later, into one stream."""
    key, body = _ask("ollama", tokens=4, status=429, retry_after=1, fail_times=1)
    r = stream(proxy.url("/v1/chat"), body)
    assert r.text() == "".join(WORDS[:4]) and r.kinds()[-1] == "done"
    first, second = upstream.records(key)
    assert second["started"] - first["ended"] >= 0.95


def test_429_asking_too_long_a_wait_fails_at_once(proxy: Server,
                                                  upstream: FakeUpstream) -> None:
    """A Retry-After beyond the limit is not waited for: a 429 before the first byte."""
    key, body = _ask("openai", tokens=4, status=429, retry_after=600)
    started = time.monotonic()
    r = stream(proxy.url("/v1/chat"), body)
    assert time.monotonic() - started < 2
    assert r.status == 429
    assert json.loads(r.raw)["error"]["code"] == "upstream_rate_limited"
    assert int(r.headers["retry-after"]) >= 1
    assert len(upstream.records(key)) == 1


@pytest.mark.parametrize("agent", ["ollama", "openai"])
def test_client_disconnect_closes_the_upstream_within_1s(
        proxy: Server, upstream: FakeUpstream, agent: str) -> None:
    """Our client vanishes mid-stream: the upstream sees its connection closed within 1 s."""
    key, body = _ask(agent, tokens=500, pace_ms=20)
    client = RawStream(proxy.port, "/v1/chat", body)
    client.read_until(b"event: delta", 2)
    left = time.time()
    client.close()
    records = upstream.wait_records(key, lambda rs: rs and rs[0]["client_closed"])
    assert records[0]["client_closed"] - left < 1.0
    assert records[0]["tokens"] < 500


def test_model_outside_the_allowlist_is_a_400(proxy: Server) -> None:
    """A request may pick a model only within the settings: anything else is refused."""
    _, body = _ask("ollama", tokens=1)
    body["options"] = {"model": "not-allowed"}
    r = stream(proxy.url("/v1/chat"), body)
    assert r.status == 400
    assert "not allowed" in json.loads(r.raw)["error"]["message"]


def test_bad_api_key_is_a_clear_error_not_retried(proxy: Server,
                                                  upstream: FakeUpstream) -> None:
    """The upstream refuses our key: a 502 upstream_unauthorized naming the 401, one attempt."""
    key, body = _ask("openai", tokens=3, require_key="sk-another-key-0000")
    r = stream(proxy.url("/v1/chat"), body)
    assert r.status == 502  # before the first byte: an ordinary HTTP error
    error = json.loads(r.raw)["error"]
    assert error["code"] == "upstream_unauthorized"
    assert "401" in error["message"] and "Incorrect API key" in error["message"]
    assert upstream.api_key not in r.raw.decode() and upstream.api_key not in proxy.log()
    assert len(upstream.records(key)) == 1
