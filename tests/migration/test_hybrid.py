"""The hybrid front: routing by the flag, one loop, disconnects and threads on the Flask branch.

The whole contract suite also runs on hybrid-0, hybrid-50 and hybrid-100 (tests/contract);
these tests pin what only the hybrid front does.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from migration.flags import bucket_of
from tests.clients import RawStream, chat_body, metric, stream, wait_for
from tests.probe_agents import read_probe
from tests.servers import REPO, Server

KEY = "operator-key-for-tests"


def conversation(async_side: bool) -> str:
    """A conversation id that hybrid-50 sends to async (True) or to legacy (False)."""
    return next(c for c in (f"conv-{i}" for i in itertools.count())
                if (bucket_of(c) < 50) == async_side)


def probe_body(tmp_path: Path, conversation_id: str, **options: object) -> dict[str, object]:
    probe = str(tmp_path / f"probe-{conversation_id}-{time.monotonic_ns()}.jsonl")
    return {**chat_body("probe", probe_file=probe, **options),
            "conversation_id": conversation_id}


def probe_record(body: dict[str, object]) -> dict[str, object]:
    options = body["options"]
    assert isinstance(options, dict)
    return wait_for(lambda: read_probe(options["probe_file"]), timeout=5)[0]  # type: ignore[no-any-return]


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    problems = []
    for srv in started:
        srv.stop()
        problems += srv.problems()
    assert not problems, "\n".join(problems)


def start(servers: list[Server], path_id: str, **env: str) -> Server:
    srv = Server(path_id, env)
    servers.append(srv)
    return srv


@pytest.mark.parametrize(("path_id", "path", "form"), [
    ("hybrid-0", "legacy", "sync"), ("hybrid-100", "async", "async")])
def test_zero_and_hundred_percent_serve_everything_on_one_branch(
        servers: list[Server], tmp_path: Path, path_id: str, path: str, form: str) -> None:
    """At 0 % every chat is legacy with the sync agent form; at 100 % async with the async form."""
    srv = start(servers, path_id)
    for i in range(6):
        body = probe_body(tmp_path, f"c{i}", tokens=3, interval_ms=1)
        r = stream(srv.url("/v1/chat"), body)
        assert r.headers["x-stream-path"] == path and r.kinds()[-1] == "done"
        assert probe_record(body)["form"] == form
    assert metric(srv.base_url, "streambridge_streams_total", path=path) == 6


def test_fifty_percent_is_sticky_per_conversation_and_shares_one_set_of_slots(
        servers: list[Server], tmp_path: Path) -> None:
    """Each conversation keeps its branch; max_streams counts both branches together."""
    srv = start(servers, "hybrid-50", STREAMBRIDGE_MAX_STREAMS="1",
                STREAMBRIDGE_ADMISSION_TIMEOUT="0.2")
    for side, path in ((True, "async"), (False, "legacy")):
        cid = conversation(side)
        paths = {stream(srv.url("/v1/chat"), {**chat_body(tokens=2), "conversation_id": cid})
                 .headers["x-stream-path"] for _ in range(4)}
        assert paths == {path}
    holder = RawStream(srv.port, "/v1/chat",
                       {**chat_body(tokens=1000, interval_ms=20),
                        "conversation_id": conversation(False)})
    holder.read_until(b"event: delta")
    refused = httpx.post(srv.url("/v1/chat"), timeout=10, json={
        **chat_body(tokens=1), "conversation_id": conversation(True)})
    assert refused.status_code == 503
    assert refused.headers["x-stream-path"] == "async"
    holder.close()


def test_a_new_conversation_gets_an_id_that_keeps_it_on_its_branch(servers: list[Server]
                                                                   ) -> None:
    """Without a conversation id the front assigns one; its next turn lands on the same branch."""
    srv = start(servers, "hybrid-50")
    for _ in range(6):
        first = stream(srv.url("/v1/chat"), chat_body(tokens=1))
        cid = first.headers["x-conversation-id"]
        again = stream(srv.url("/v1/chat"), {**chat_body(tokens=1), "conversation_id": cid})
        assert again.headers["x-stream-path"] == first.headers["x-stream-path"]
        assert first.headers["x-stream-path"] == ("async" if bucket_of(cid) < 50 else "legacy")


def test_flag_file_changes_apply_without_a_restart(servers: list[Server],
                                                   tmp_path: Path) -> None:
    """`flags set` flips new requests within about a second; logs and metrics show it."""
    flags = str(tmp_path / "flags.toml")

    def flags_set(*settings: str) -> None:
        subprocess.run([sys.executable, "-m", "migration.cli", "flags", "set", "--file",
                        flags, *settings], cwd=REPO, check=True, capture_output=True)

    flags_set("mode=legacy")
    srv = start(servers, "hybrid-50", STREAMBRIDGE_FLAGS_FILE=flags)
    body = {**chat_body(tokens=1), "conversation_id": "c1"}
    assert stream(srv.url("/v1/chat"), body).headers["x-stream-path"] == "legacy"
    flags_set("mode=async")
    wait_for(lambda: stream(srv.url("/v1/chat"), body).headers["x-stream-path"] == "async",
             timeout=3, interval=0.1)
    assert "flags loaded from" in srv.log()
    assert "-> path=async impl=async (mode)" in srv.log()
    assert metric(srv.base_url, "streambridge_flag_decisions_total", path="async",
                  reason="mode") >= 1
    flags_set("mode=async", "agents.probe.mode=legacy", "agents.demo.form=sync")
    wait_for(lambda: stream(srv.url("/v1/chat"), chat_body("probe", tokens=1))
             .headers["x-stream-path"] == "legacy", timeout=3, interval=0.1)


def test_agent_form_is_flagged_independently_of_the_path(servers: list[Server],
                                                         tmp_path: Path) -> None:
    """form=async runs the async form behind Flask; form=sync the sync form natively (the
    first file spells it ``impl``, as files written before issue 12 do)."""
    flags = tmp_path / "flags.json"
    for key, mode, form, path in (("impl", "legacy", "async", "legacy"),
                                  ("form", "async", "sync", "async")):
        flags.write_text(json.dumps({"mode": mode, "agents": {"probe": {key: form}}}))
        srv = start(servers, "hybrid-50", STREAMBRIDGE_FLAGS_FILE=str(flags))
        body = probe_body(tmp_path, "c1", tokens=3, interval_ms=1)
        assert stream(srv.url("/v1/chat"), body).headers["x-stream-path"] == path
        assert probe_record(body)["form"] == form


def test_override_header_is_honoured_only_with_the_operator_key(servers: list[Server]) -> None:
    """X-Stream-Path-Override moves a request only when X-Operator-Key matches."""
    srv = start(servers, "hybrid-0", STREAMBRIDGE_FLAGS_OPERATOR_KEY=KEY)
    body = {**chat_body(tokens=1), "conversation_id": "c1"}
    cases = (({"x-stream-path-override": "async", "x-operator-key": KEY}, "async"),
             ({"x-stream-path-override": "async", "x-operator-key": "guess"}, "legacy"),
             ({"x-stream-path-override": "async"}, "legacy"))
    for headers, path in cases:
        assert stream(srv.url("/v1/chat"), body, headers=headers).headers[
            "x-stream-path"] == path
    assert "override refused" in srv.log()


def test_flask_branch_stops_the_agent_as_soon_as_the_client_leaves(
        servers: list[Server], tmp_path: Path) -> None:
    """a2wsgi never sees a disconnect; the front does, and the sync agent stops at once."""
    srv = start(servers, "hybrid-0", STREAMBRIDGE_HEARTBEAT="30")  # no heartbeat probe
    body = probe_body(tmp_path, "c1", tokens=100_000, interval_ms=20)
    client = RawStream(srv.port, "/v1/chat", body)
    client.read_until(b"event: delta", 3)
    left = time.time()
    client.close()
    record = probe_record(body)
    assert record["form"] == "sync"
    assert record["t"] - left < 0.5  # type: ignore[operator]
    wait_for(lambda: metric(srv.base_url, "streambridge_streams_total",
                            outcome="client_disconnected", path="legacy") == 1)


def test_flask_branch_is_not_capped_at_ten_streams(servers: list[Server]) -> None:
    """Twenty-four concurrent legacy-branch streams all start at once (a2wsgi's default is 10)."""
    srv = start(servers, "hybrid-0")
    clients = [RawStream(srv.port, "/v1/chat", chat_body(tokens=10_000, interval_ms=50))
               for _ in range(24)]
    started = time.monotonic()
    for c in clients:
        c.read_until(b"event: delta", 1, timeout=5)
    assert time.monotonic() - started < 3
    assert httpx.get(srv.url("/readyz"), timeout=5).json()["active_streams"] == 24
    for c in clients:
        c.close()
    wait_for(lambda: httpx.get(srv.url("/readyz"), timeout=5).json()["active_streams"] == 0)


def test_more_requests_than_wsgi_threads_get_503_not_a_silent_queue(
        servers: list[Server]) -> None:
    """With STREAMBRIDGE_HYBRID_THREADS=2, a third Flask-branch request waits, then gets 503."""
    srv = start(servers, "hybrid-0", STREAMBRIDGE_HYBRID_THREADS="2",
                STREAMBRIDGE_ADMISSION_TIMEOUT="0.3")
    # Buffered answers (stream: false) hold their WSGI thread to the end; streams hold
    # one only until their first frame (test_a_flask_branch_stream_frees_its_wsgi_thread...).
    holders = [RawStream(srv.port, "/v1/chat", {**chat_body(tokens=100, interval_ms=50),
                                                 "stream": False}) for _ in range(2)]
    wait_for(lambda: httpx.post(srv.url("/v1/chat"), json=chat_body(tokens=1),
                                timeout=5).status_code == 503)
    started = time.monotonic()
    r = httpx.post(srv.url("/v1/chat"), json=chat_body(tokens=1), timeout=5)
    assert 0.25 < time.monotonic() - started < 2
    assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
    assert r.headers["retry-after"] and r.headers["x-stream-path"] == "legacy"
    assert "WSGI threads are busy" in srv.log()
    for c in holders:
        c.close()


def test_sigterm_ends_streams_of_both_branches_in_band(servers: list[Server]) -> None:
    """A drain ends a legacy-branch and an async-branch stream with error shutdown, then exits."""
    srv = start(servers, "hybrid-50", STREAMBRIDGE_DRAIN_GRACE="0.5")
    results: dict[bool, object] = {}

    def read(side: bool) -> None:
        results[side] = stream(srv.url("/v1/chat"), timeout=30, body={
            **chat_body(tokens=10_000, interval_ms=50), "conversation_id": conversation(side)})

    readers = [threading.Thread(target=read, args=(side,)) for side in (True, False)]
    for t in readers:
        t.start()
    wait_for(lambda: httpx.get(srv.url("/readyz"), timeout=5).json()["active_streams"] == 2)
    started = time.monotonic()
    srv.signal(signal.SIGTERM)
    for t in readers:
        t.join(timeout=20)
    for side, path in ((True, "async"), (False, "legacy")):
        r = results[side]
        assert r.headers["x-stream-path"] == path  # type: ignore[attr-defined]
        assert json.loads(r.events[-1].data)["code"] == "shutdown"  # type: ignore[attr-defined]
    srv.wait(timeout=15)
    assert time.monotonic() - started < 7


def test_worker_sets_uvicorn_graceful_timeout_inside_gunicorns() -> None:
    """uvicorn-worker leaves timeout_graceful_shutdown unset (uvicorn#2094); ours sets it."""
    from gunicorn.config import Config

    from migration.hybrid import HybridWorker

    class Log:
        error_log = logging.getLogger("test.error")
        access_log = logging.getLogger("test.access")

    cfg = Config()
    cfg.set("graceful_timeout", 20)
    worker = HybridWorker(0, 0, [], None, 30, cfg, Log())
    try:
        # default drain_grace 10: 20 - 10 - 3
        assert worker.config.timeout_graceful_shutdown == 7
    finally:
        worker.tmp.close()


def test_legacy_branch_runs_on_the_servers_own_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """In process: no loop thread is started, and a Flask-branch stream completes on this
    loop; the front composes its bridge with the app's extension, which it never alters."""
    from legacy_bridge import bridges
    from migration._flagfile import FlagStore
    from migration._hybrid_branches import run_lifespan
    from migration.flags import FlagConfig
    from migration.hybrid import HybridFront

    monkeypatch.setattr(signal, "signal", lambda *a: None)  # keep pytest's SIGTERM handler
    front = HybridFront(flags=FlagStore(None, FlagConfig(mode="legacy")))
    ext = front.flask_app.extensions["streambridge"]
    own = ext.bridge

    async def main() -> tuple[httpx.Response, bool]:
        shutdown = await run_lifespan(front)  # type: ignore[arg-type]
        try:
            transport = httpx.ASGITransport(app=front)  # type: ignore[arg-type]
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                r = await client.post("/v1/chat", json=chat_body(tokens=3))
            return r, front.bridge._loop is asyncio.get_running_loop()
        finally:
            await shutdown()

    response, same_loop = asyncio.run(main())
    front.wsgi.close(wait=True)
    assert same_loop
    assert response.headers["x-stream-path"] == "legacy"
    assert "event: done" in response.text
    assert not [t for t in threading.enumerate() if t.name == "streambridge-loop"]
    assert ext.bridge is own and own._pid is None  # the extension's own: kept, never started
    assert front.bridge is not None and front.bridge not in bridges()
    assert front.legacy_service.lifecycle is front.lifecycle  # one drain for both branches


def _user_app() -> tuple[object, list[str]]:
    """A user's Flask app with one declared endpoint; records each to_request call."""
    from flask import Flask, abort, session

    from legacy_bridge import StreamBridge

    bridge = StreamBridge()  # the factory pattern: declared before init_app
    calls: list[str] = []

    def talk(body: dict[str, object]) -> dict[str, object]:
        if body.get("user") != "alice":
            abort(401)
        calls.append(str(body["thread"]))
        session["turns"] = session.get("turns", 0) + 1
        return {"message": "hi", "conversation_id": body["thread"], "options": {"tokens": 3}}

    bridge.endpoint("/talk", agent="demo", to_request=talk)
    app = Flask("user")
    app.secret_key = "test-secret"
    bridge.init_app(app)
    return app, calls


def _serve_in_process(monkeypatch: pytest.MonkeyPatch, app: object, config: object,
                      requests: list[tuple[str, object]]) -> list[httpx.Response]:
    """POST each ``(path, body)`` to a HybridFront over ``app``, in this process."""
    from migration._flagfile import FlagStore
    from migration._hybrid_branches import run_lifespan
    from migration.hybrid import HybridFront

    monkeypatch.setattr(signal, "signal", lambda *a: None)  # keep pytest's SIGTERM handler
    front = HybridFront(flags=FlagStore(None, config), app=app)  # type: ignore[arg-type]
    assert front.contract == frozenset()  # no contract blueprint: /v1/chat is the app's

    async def main() -> list[httpx.Response]:
        shutdown = await run_lifespan(front)  # type: ignore[arg-type]
        try:
            transport = httpx.ASGITransport(app=front)  # type: ignore[arg-type]
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return [await client.post(path, json=body) for path, body in requests]
        finally:
            await shutdown()

    try:
        return asyncio.run(main())
    finally:
        front.wsgi.close(wait=True)


@pytest.mark.parametrize("mode", ["legacy", "async"])
def test_declared_endpoint_runs_the_users_view_once_and_keeps_its_cookies(
        monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """In process: on both branches the user's to_request runs once per request (auth
    refuses before any stream), the stream is served on the flagged branch, and the
    session cookie the view set reaches the client."""
    from migration.flags import FlagConfig

    app, calls = _user_app()
    ok, refused, builtin = _serve_in_process(monkeypatch, app, FlagConfig(mode=mode), [
        ("/talk", {"user": "alice", "thread": "t-1"}),
        ("/talk", {"user": "mallory", "thread": "t-2"}),
        ("/v1/chat", chat_body(tokens=1))])
    assert ok.status_code == 200 and ok.headers["x-stream-path"] == mode
    assert ok.text.count("event: done") == 1
    assert "session=" in ok.headers.get("set-cookie", "")
    assert refused.status_code == 401
    assert calls == ["t-1"]  # once, and never for the refused request
    assert builtin.status_code == 404  # the user's app has no /v1/chat


@pytest.mark.parametrize(("mode", "agents", "served"), [
    ("legacy", {"/talk": {"mode": "async"}}, "async"),
    ("async", {"/talk": {"mode": "legacy"}, "demo": {"mode": "async"}}, "legacy"),
    ("legacy", {"demo": {"mode": "async"}}, "async")])
def test_the_flag_routes_a_declared_endpoint_by_its_path_then_its_agent(
        monkeypatch: pytest.MonkeyPatch, mode: str, agents: dict[str, object],
        served: str) -> None:
    """agents."/talk".mode pins the endpoint (and wins over its agent's mode)."""
    from migration.flags import FlagConfig

    app, _ = _user_app()
    config = FlagConfig(mode=mode, agents=agents)  # type: ignore[arg-type]
    (r,) = _serve_in_process(monkeypatch, app, config,
                             [("/talk", {"user": "alice", "thread": "t-1"})])
    assert r.status_code == 200 and r.headers["x-stream-path"] == served


def test_a_bad_app_is_one_line_and_exit_2() -> None:
    """--app naming nothing importable: one line naming the app, exit 2, no traceback."""
    done = subprocess.run([sys.executable, "-m", "migration.cli", "serve", "--path", "hybrid",
                           "--app", "no_such_package.wsgi:app", "--port", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "no_such_package" in done.stderr
    assert "Traceback" not in done.stderr
