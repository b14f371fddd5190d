"""examples/flask_app run as a user runs it: the README's commands, from its directory.

Every server is started with a command line copied from the example's README (cwd =
the example, ``PYTHONPATH=.`` as documented; only the port becomes 0), against the
fake OpenAI-compatible upstream. The tests speak to the user's endpoint (``POST
/chat``, their JSON shape and their header auth), on each path the README names:
gunicorn gthread and gevent, and the hybrid front at 0, 50 and 100 % (at 50 %, one
conversation pinned to each branch by its sticky bucket).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from async_core.harness import ServerProcess
from migration.flags import FlagConfig, RouteRequest, decide
from tests.clients import RawStream, metric, stream, wait_for
from tests.fake_upstream import API_KEY, FakeUpstream, fake
from tests.servers import REPO, Server

EXAMPLE = REPO / "examples" / "flask_app"
ALICE = {"X-User-Token": "alice-token"}
# path id: (README command, extra environment)
SERVERS: dict[str, tuple[str, dict[str, str]]] = {
    "gthread": ("gthread", {}),
    "gevent": ("gevent", {}),
    "hybrid-0": ("hybrid", {"STREAMBRIDGE_FLAGS_MODE": "0"}),
    "hybrid-50": ("hybrid", {"STREAMBRIDGE_FLAGS_MODE": "50"}),
    "hybrid-100": ("hybrid", {"STREAMBRIDGE_FLAGS_MODE": "100"}),
    "hybrid-gunicorn-50": ("hybrid-gunicorn", {"STREAMBRIDGE_FLAGS_MODE": "50"}),
}


def readme_command(name: str) -> str:
    """The command line under ``<!-- command: name -->`` in the example's README."""
    text = (EXAMPLE / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- command: {re.escape(name)} -->\s*```sh\n(.+?)\n```", text)
    assert match, f"README has no command {name!r}"
    return match.group(1)


class ExampleServer(ServerProcess):
    """A README command run in the example's directory (a subprocess we own)."""

    def __init__(self, path_id: str, command: str, env: dict[str, str]) -> None:
        self.path_id = path_id
        command = command.replace("127.0.0.1:8000", "127.0.0.1:0").replace(
            "--port 8000", "--port 0")
        super().__init__(f"example-{path_id}", ["bash", "-c", command], cwd=EXAMPLE, env={
            "PYTHONUNBUFFERED": "1", "STREAMBRIDGE_HEARTBEAT": "0.25",
            "STREAMBRIDGE_DRAIN_GRACE": "2", **env,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "STREAMBRIDGE_DATABASE_PATH": os.path.join(tempfile.mkdtemp(prefix="sb-db-"),
                                                       "streambridge.sqlite3"),
            "PYTHONPATH": None, "STREAMBRIDGE_AGENTS": None})  # only what the README sets

    def problems(self) -> list[str]:
        """Log lines that no correct run prints (``Server.bad_lines``)."""
        return Server.bad_lines(self.log())


def start_example(path_id: str, upstream: FakeUpstream, **settings: str) -> ExampleServer:
    """Start the example with the README command of ``path_id`` and ``settings``."""
    name, env = SERVERS[path_id]
    return ExampleServer(path_id, readme_command(name), {
        **env, "MYAPP_UPSTREAM_URL": upstream.url + "/v1", "MYAPP_UPSTREAM_KEY": API_KEY,
        **{f"STREAMBRIDGE_{k.upper()}": v for k, v in settings.items()}})


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    """The fake OpenAI-compatible upstream the example's agent streams from."""
    up = FakeUpstream()
    yield up
    up.stop()


@pytest.fixture(scope="module", params=list(SERVERS))
def example(request: pytest.FixtureRequest, upstream: FakeUpstream) -> Iterator[ExampleServer]:
    """The example app, started with one of its README's commands."""
    srv = start_example(request.param, upstream)
    yield srv
    srv.stop()
    # the example logs its own view's traceback on purpose; nothing else may appear
    leaked = [line for line in srv.problems() if "Traceback" not in line]
    assert not leaked, "\n".join(leaked)


def expected_path(path_id: str, conversation: str) -> str:
    """The path a conversation is served on: legacy under gunicorn, the flag's behind the front."""
    if not path_id.startswith("hybrid"):
        return "legacy"
    mode = int(path_id.rsplit("-", 1)[1])
    return decide(FlagConfig(mode=mode), RouteRequest("assistant", conversation)).path


def conversations(path_id: str, tag: str) -> list[tuple[str, str]]:
    """One conversation per branch this server has: ``(conversation id, expected path)``."""
    found: dict[str, str] = {}
    for i in range(200):
        found.setdefault(expected_path(path_id, f"{tag}-{i}"), f"{tag}-{i}")
    if path_id.endswith("-50"):
        assert set(found) == {"legacy", "async"}
    return sorted((c, p) for p, c in found.items())


def chat(srv: Server, body: Any, headers: dict[str, str] | None = None,
         **kwargs: Any) -> httpx.Response:
    return httpx.post(srv.url("/chat"), json=body, headers=headers, timeout=30, **kwargs)


def test_streams_complete_with_one_done_on_every_branch(example: ExampleServer) -> None:
    """The user's endpoint streams the upstream's words and ends with exactly one done."""
    for conversation, path in conversations(example.path_id, "ok"):
        r = stream(example.url("/chat"), {"prompt": fake(text="one two three ", tokens=3),
                                          "thread": conversation}, headers=ALICE)
        assert r.status == 200, r.raw
        assert r.headers["x-stream-path"] == path
        assert r.headers["x-conversation-id"] == conversation
        assert r.kinds().count("done") == 1 and r.kinds()[-1] == "done", r.kinds()
        assert r.text() == "one two three "


def test_an_upstream_failure_after_the_first_byte_is_one_in_band_error(
        example: ExampleServer) -> None:
    """The upstream errs (in-band) or drops the connection mid-stream: deltas, then exactly
    one terminal event, an error; no done."""
    for conversation, path in conversations(example.path_id, "fail"):
        for fault in ({"error_at": 2}, {"drop_at": 2}):
            r = stream(example.url("/chat"), {"prompt": fake(tokens=6, **fault),
                                              "thread": conversation}, headers=ALICE)
            assert r.status == 200 and r.headers["x-stream-path"] == path
            kinds = r.kinds()
            assert kinds.count("delta") >= 1 and kinds[-1] == "error", (fault, kinds)
            assert kinds.count("error") == 1 and "done" not in kinds
            assert json.loads(r.events[-1].data)["code"] == "agent_error"


def test_stream_false_is_one_json_body_on_every_branch(example: ExampleServer) -> None:
    """The user's body with "stream": false: one JSON body with the whole reply."""
    for conversation, path in conversations(example.path_id, "whole"):
        r = chat(example, {"prompt": fake(text="one two ", tokens=2), "thread": conversation,
                           "stream": False}, ALICE)
        assert r.status_code == 200, r.text
        assert r.headers["x-stream-path"] == path
        assert r.json()["text"] == "one two " and r.json()["finish_reason"] == "stop"


def test_unauthenticated_requests_are_refused_on_every_branch(example: ExampleServer,
                                                              upstream: FakeUpstream) -> None:
    """No token or a wrong one: the app's own 401, and the upstream is never called."""
    for conversation, _ in conversations(example.path_id, "auth"):
        key = f"auth-{example.path_id}-{conversation}"
        body = {"prompt": fake(tokens=3, key=key), "thread": conversation}
        for headers in ({}, {"X-User-Token": "wrong"}):
            r = chat(example, body, headers)
            assert r.status_code == 401
            assert r.json() == {"problem": "Unauthorized", "user": None}
        assert upstream.records(key) == []


def test_bad_bodies_get_a_4xx_json_before_the_stream(example: ExampleServer) -> None:
    """Not JSON, the app's own validation and the contract's checks: 400 JSON errors."""
    r = httpx.post(example.url("/chat"), content=b"not json", headers=ALICE, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    for conversation, path in conversations(example.path_id, "bad"):
        r = chat(example, {"thread": conversation}, ALICE)  # no prompt: the app's own check
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
        r = chat(example, {"prompt": "hi", "thread": conversation, "stream": "yes"}, ALICE)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
        if example.path_id.startswith("hybrid"):  # the front names the branch, as on ours
            assert r.headers["x-stream-path"] == path
    r = chat(example, {"prompt": "hi", "thread": "not a valid id!"}, ALICE)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"


def test_a_client_leaving_mid_stream_stops_the_agent(example: ExampleServer,
                                                    upstream: FakeUpstream) -> None:
    """Disconnect after two deltas: the agent's upstream connection is closed at once."""
    for conversation, _ in conversations(example.path_id, "gone"):
        key = f"gone-{example.path_id}-{conversation}"
        raw = RawStream(example.port, "/chat", {
            "prompt": fake(tokens=400, pace_ms=20, key=key), "thread": conversation},
            headers=ALICE)
        raw.read_until(b"event: delta", 2)
        raw.close()
        records = upstream.wait_records(
            key, lambda rs: bool(rs) and rs[0]["client_closed"] is not None, timeout=10)
        assert records[0]["tokens"] < 400


def test_the_apps_other_routes_are_its_own(example: ExampleServer) -> None:
    """A plain JSON route with the app's auth, and its 404 handler, behind every front."""
    r = httpx.get(example.url("/api/me"), headers=ALICE, timeout=10)
    assert r.status_code == 200 and r.json() == {"user": "alice"}
    r = httpx.get(example.url("/api/me"), timeout=10)
    assert r.status_code == 401 and r.json() == {"problem": "Unauthorized", "user": None}
    r = httpx.get(example.url("/no/such/page"), headers=ALICE, timeout=10)
    assert r.status_code == 404 and r.json() == {"problem": "Not Found", "user": "alice"}


def test_a_raising_view_is_the_apps_500_and_the_server_keeps_serving(
        example: ExampleServer) -> None:
    """The app's own view or to_request raising: its 500 body, then streams still work."""
    r = httpx.get(example.url("/api/boom"), headers=ALICE, timeout=10)
    assert r.status_code == 500 and r.json() == {"problem": "something broke on our side"}
    for conversation, path in conversations(example.path_id, "boom"):
        r = chat(example, {"prompt": "boom", "thread": conversation}, ALICE)
        assert r.status_code == 500 and r.json() == {"problem": "something broke on our side"}
        done = stream(example.url("/chat"), {"prompt": fake(tokens=2), "thread": conversation},
                      headers=ALICE)
        assert done.status == 200 and done.kinds()[-1] == "done"
        assert done.headers["x-stream-path"] == path


def test_metrics_count_the_users_endpoint(example: ExampleServer) -> None:
    """/metrics counts each stream of the user's endpoint under its agent and path."""
    for conversation, path in conversations(example.path_id, "metrics"):
        labels = {"agent": "assistant", "outcome": "completed", "path": path}
        before = metric(example.base_url, "streambridge_streams_total", **labels)
        r = stream(example.url("/chat"), {"prompt": fake(tokens=2), "thread": conversation},
                   headers=ALICE)
        assert r.kinds()[-1] == "done"
        # The stream is counted when it finishes, just after its last byte has gone out.
        wait_for(lambda labels=labels, want=before + 1: metric(
            example.base_url, "streambridge_streams_total", **labels) == want)


@pytest.mark.parametrize("path_id", ["gthread", "hybrid-50"])
def test_admission_and_the_drain_hold_on_the_users_endpoint(path_id: str,
                                                             upstream: FakeUpstream) -> None:
    """Full slots: 503 + Retry-After on every branch; SIGTERM: open streams end in-band
    with error shutdown (at 50 %: one stream on each branch, one shared set of slots)."""
    srv = start_example(path_id, upstream, max_streams="2", admission_timeout="0.2",
                        drain_grace="1")
    try:
        convs = conversations(path_id, "drain")
        results: list[Any] = []

        def read(conversation: str) -> None:
            results.append(stream(srv.url("/chat"), {
                "prompt": fake(tokens=10_000, pace_ms=50), "thread": conversation},
                headers=ALICE, timeout=30))

        readers = [threading.Thread(target=read, args=(convs[i % len(convs)][0],))
                   for i in range(2)]
        for t in readers:
            t.start()
        wait_for(lambda: httpx.get(srv.url("/readyz"), timeout=5).json()["active_streams"]
                 == 2, timeout=10)
        for conversation, _ in convs:
            r = chat(srv, {"prompt": fake(tokens=1), "thread": conversation}, ALICE)
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] and r.json()["error"]["code"] == "overloaded"
        srv.signal(signal.SIGTERM)
        for t in readers:
            t.join(timeout=20)
        assert sorted(r.headers["x-stream-path"] for r in results) == sorted(
            p for _, p in (convs * 2)[:2])
        for r in results:
            assert r.kinds()[-1] == "error" and r.kinds().count("done") == 0
            assert json.loads(r.events[-1].data)["code"] == "shutdown"
        srv.wait(timeout=15)
    finally:
        srv.stop()


def test_the_hybrid_gunicorn_command_refuses_an_app_it_cannot_import() -> None:
    """The README's gunicorn command with a mistyped STREAMBRIDGE_APP: one line, exit 2."""
    command = readme_command("hybrid-gunicorn").replace("myapp.wsgi:app", "mypap.wsgi:app")
    done = subprocess.run(["bash", "-c", command.replace("127.0.0.1:8000", "127.0.0.1:0")],
                          cwd=EXAMPLE, capture_output=True, text=True, timeout=60, env={
                              **os.environ, "PATH": f"{Path(sys.executable).parent}"
                                                    f"{os.pathsep}{os.environ['PATH']}"})
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "[INFO]" not in line]
    assert errors == ["streambridge: STREAMBRIDGE_APP: app 'mypap.wsgi:app': no module named "
                      "'mypap' (run from your project's directory or set PYTHONPATH)"]
