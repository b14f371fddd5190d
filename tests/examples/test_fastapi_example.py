"""examples/fastapi_app, started as its README says, tested like a user's project.

The app runs with the README's own ``uvicorn`` command (cwd ``examples/fastapi_app``,
module ``app``), its sync agent streaming from ``tests/fake_upstream.py`` with
``requests``. The tests talk to the user's routes (``/chat``, ``/poem``) and to the
contract mounted under ``/llm``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import fastapi  # noqa: F401 - the example's dependency, in the [test] extra: fail if absent
import httpx
import openai
import pytest

from async_core.harness import ServerProcess
from tests.clients import RawStream, metric, stream, wait_for
from tests.fake_upstream import FakeUpstream, fake
from tests.servers import REPO

EXAMPLE = REPO / "examples" / "fastapi_app"


def readme_command() -> str:
    """The ``uvicorn`` command of the README, on an ephemeral port."""
    text = (EXAMPLE / "README.md").read_text(encoding="utf-8")
    (line,) = [m.group(1) for m in re.finditer(r"^\$ (uvicorn .*)$", text, re.MULTILINE)]
    assert "--port 8000" in line
    return line.replace("--port 8000", "--port 0")


class ExampleApp(ServerProcess):
    """The example app under uvicorn, as the README starts it (ready: ``/llm/readyz``)."""

    def __init__(self, upstream: FakeUpstream, **env: str) -> None:
        self.db = os.path.join(tempfile.mkdtemp(prefix="sb-db-"), "example.sqlite3")
        super().__init__("fastapi-example", ["bash", "-c", f"exec {readme_command()}"], env={
            "UPSTREAM_URL": upstream.url + "/v1", "UPSTREAM_API_KEY": upstream.api_key,
            "PYTHONUNBUFFERED": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "STREAMBRIDGE_DATABASE_PATH": self.db, **env,
            "PYTHONPATH": None},  # the installed package, as a user has it
            cwd=EXAMPLE, health="/llm/readyz")

    def stop(self, timeout: float = 20.0, sig: int = signal.SIGTERM) -> int:
        """SIGTERM, wait, SIGKILL if it lingers."""
        return super().stop(timeout, sig)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def example(upstream: FakeUpstream) -> Iterator[ExampleApp]:
    app = ExampleApp(upstream, STREAMBRIDGE_DRAIN_GRACE="1")
    yield app
    app.stop()
    assert "Traceback" not in app.log(), app.log()


def test_the_users_route_streams_the_sync_agent_to_one_done(example: ExampleApp) -> None:
    """POST /chat streams the requests-based agent's upstream text and ends with one done."""
    got = stream(example.base_url + "/chat", {"message": "hi"})
    assert got.status == 200, got.raw
    assert got.headers["x-stream-path"] == "async"
    assert got.kinds().count("done") == 1 and got.kinds()[-1] == "done"
    assert got.text() == "The quick brown fox jumps over the lazy dog. "


def test_the_users_own_body_streams_the_async_agent(example: ExampleApp) -> None:
    """POST /poem builds the agent request from query parameters; the async agent streams."""
    got = stream(example.base_url + "/poem?words=3&pace_ms=1", {})
    assert got.status == 200, got.raw
    assert got.text() == "verse0 verse1 verse2 "
    assert got.kinds()[-1] == "done"


@pytest.mark.parametrize(("path", "content", "status", "code"), [
    ("/chat", b"{not json", 400, "bad_request"),
    ("/chat", b'{"messages": "hi"}', 400, "bad_request"),
    ("/chat", b'{"message": "hi", "agent": "nobody"}', 404, "unknown_agent"),
    ("/llm/v1/chat", b"[]", 400, "bad_request"),
])
def test_bad_input_on_the_users_routes_is_a_4xx_json_error(
        example: ExampleApp, path: str, content: bytes, status: int, code: str) -> None:
    """A bad body gets the contract's JSON error before the first byte."""
    r = httpx.post(example.base_url + path, content=content,
                   headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_a_disconnect_stops_the_sync_agent_and_closes_its_upstream(
        example: ExampleApp, upstream: FakeUpstream) -> None:
    """The client leaves mid-stream: the upstream response is closed within a second."""
    script = fake(key="example-disconnect", tokens=2000, pace_ms=20)
    raw = RawStream(example.port, "/chat", {"message": script})
    raw.read_until(b"event: delta", 2)
    left = time.time()
    raw.close()
    records = upstream.wait_records("example-disconnect",
                                    lambda rs: bool(rs) and rs[0]["client_closed"] is not None)
    assert records[0]["client_closed"] - left < 1.0
    assert records[0]["tokens"] < 2000


def test_a_disconnect_stops_the_async_agent(example: ExampleApp) -> None:
    """The async agent's stream ends as client_disconnected soon after the client leaves."""
    before = metric(example.base_url + "/llm", "streambridge_streams_total",
                    outcome="client_disconnected", agent="poet")
    raw = RawStream(example.port, "/poem?words=5000&pace_ms=10", {})
    raw.read_until(b"event: delta", 2)
    raw.close()
    wait_for(lambda: metric(example.base_url + "/llm", "streambridge_streams_total",
                            outcome="client_disconnected", agent="poet") == before + 1,
             timeout=3)


def test_transcripts_are_stored_and_served_under_the_prefix(example: ExampleApp) -> None:
    """The lifespan ran: /chat's turns are in GET /llm/v1/conversations/{id}."""
    got = stream(example.base_url + "/chat", {"message": "remember me",
                                              "conversation_id": "example-conv-1"})
    assert got.kinds()[-1] == "done"

    def stored() -> list[dict[str, str]] | None:
        r = httpx.get(example.base_url + "/llm/v1/conversations/example-conv-1", timeout=5)
        turns = r.json().get("turns", []) if r.status_code == 200 else []
        return turns if len(turns) == 2 else None

    turns = wait_for(stored, timeout=5)
    assert [t["role"] for t in turns] == ["user", "assistant"]
    assert turns[0]["content"] == "remember me"
    assert turns[1]["content"] == got.text()


def test_the_official_openai_client_works_against_the_mounted_router(
        example: ExampleApp) -> None:
    """openai's client, base_url under /llm, streams the async agent unchanged."""
    client = openai.OpenAI(base_url=example.base_url + "/llm/v1", api_key="unused",
                           max_retries=0)
    chunks = client.chat.completions.create(
        model="poet", stream=True, messages=[{"role": "user", "content": "hi"}])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(f"verse{i} " for i in range(8))
    whole = client.chat.completions.create(model="upstream",
                                           messages=[{"role": "user", "content": "hi"}])
    assert whole.choices[0].message.content == "The quick brown fox jumps over the lazy dog. "


def test_sigterm_drains_a_running_stream_to_a_terminal_event(upstream: FakeUpstream) -> None:
    """SIGTERM: the running stream gets the grace, then ends with error shutdown; exit."""
    app = ExampleApp(upstream, STREAMBRIDGE_DRAIN_GRACE="1")
    try:
        raw = RawStream(app.port, "/poem?words=100000&pace_ms=20", {})
        raw.read_until(b"event: delta", 1)
        app.proc.send_signal(signal.SIGTERM)
        body = raw.read_all(timeout=15)
        events = [json.loads(line[6:]) for line in body.decode().splitlines()
                  if line.startswith("data: ")]
        kinds = re.findall(r"^event: (\w+)", body.decode(), re.MULTILINE)
        assert kinds[-1] == "error" and kinds.count("error") == 1
        assert events[-1]["code"] == "shutdown" and events[-1]["retryable"] is True
        assert app.proc.wait(timeout=15) in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    finally:
        app.stop()
