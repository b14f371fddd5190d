"""The runbooks' commands, run for real: every ```console block, unless marked otherwise.

Marking (see migration/README.md): a block runs by default; a block preceded by
``<!-- not-runnable: reason -->`` is shown but not run, and the reason is required.
A runbook's blocks run in order in one bash shell (``set -euo pipefail``), so the
variables it sets carry from block to block. ``$ `` starts a command, a trailing
``\\`` continues it; the other lines are the output the doc promises, and each must
appear in what the commands printed (case-insensitive).

Each runbook runs against a server *in the state it is for* (``STATES``): the
test starts it (``$SB``, ``$PORT``, ``$SERVER_PID``) and brings it there first;
for the upstream-outage runbook, a server whose ``openai`` agent has just failed
against a dead upstream port.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from async_core.harness import free_port as _free_port
from tests.clients import RawStream, chat_body, metric, wait_for
from tests.servers import REPO, Server
from tests.streamlog.conftest import RedisServer

DOCS = sorted((REPO / "migration" / "runbooks").glob("*.md")) + [REPO / "migration" / "README.md"]
BLOCK = re.compile(r"(?:<!--\s*not-runnable:(?P<why>[^>]*)-->\s*\n)?^```console\n(?P<body>.*?)^```",
                   re.MULTILINE | re.DOTALL)


@dataclass
class Block:
    """One console block: its commands, the output it promises, and why it is skipped."""

    commands: list[str]
    expected: list[str]
    skip_reason: str | None


def parse(text: str) -> list[Block]:
    """Split a Markdown document into its console blocks."""
    blocks = []
    for m in BLOCK.finditer(text):
        commands: list[str] = []
        expected: list[str] = []
        continuing = False
        for line in m.group("body").splitlines():
            if continuing:
                commands[-1] += "\n" + line
            elif line.startswith("$ "):
                commands.append(line[2:])
            elif line.strip():
                expected.append(line.strip())
            continuing = bool(commands) and commands[-1].endswith("\\") and (
                continuing or line.startswith("$ "))
        why = m.group("why")
        blocks.append(Block(commands, expected, why.strip() if why is not None else None))
    return blocks


def test_every_doc_has_runnable_commands_and_skips_say_why() -> None:
    """Each runbook has commands that run; every skipped block gives its reason."""
    names = {d.name for d in DOCS}
    assert {"rollout.md", "rollback.md", "slow-clients-and-memory.md", "upstream-outage.md",
            "webhook-backlog.md", "deploys.md", "proxy.md"} <= names
    for doc in DOCS:
        blocks = parse(doc.read_text(encoding="utf-8"))
        assert any(b.skip_reason is None and b.commands for b in blocks), doc.name
        for b in blocks:
            assert b.commands, f"{doc.name}: a console block without a $ command"
            assert b.skip_reason != "", f"{doc.name}: not-runnable needs a reason"


@dataclass
class State:
    """The server a runbook is followed against, and how to bring it into its state."""

    path_id: str
    env: dict[str, str]
    flags: str | None = None  # the flag file's content before the server starts
    warmup: Callable[[Server], list[RawStream]] | None = None
    args: list[str] | None = None  # more serve arguments
    redis: bool = False  # a private redis-server: {redis_url} in env, $REDIS_URL
    second: str | None = None  # the path of a second server on the same env: $SB_B


def _streams(srv: Server, n: int, agent: str = "demo", **body: object) -> None:
    for i in range(n):
        r = httpx.post(srv.url("/v1/chat"), timeout=30, json={
            "message": "hi", "agent": agent, "conversation_id": f"warmup-{i}", **body})
        assert r.status_code in (200, 502), r.text


def _outage(srv: Server) -> list[RawStream]:
    # The openai agent points at a port nobody listens on: every stream fails (502).
    _streams(srv, 3, agent="openai")
    assert metric(srv.base_url, "streambridge_streams_total", outcome="agent_error") == 3
    return []


def _async_share(srv: Server) -> list[RawStream]:
    _streams(srv, 4, options={"tokens": 2})
    assert metric(srv.base_url, "streambridge_streams_total", path="async") > 0
    return []


def _slow_clients(srv: Server) -> list[RawStream]:
    # One client that left mid-stream, one that is still connected and not reading.
    gone = RawStream(srv.port, "/v1/chat", chat_body(tokens=100000, interval_ms=20))
    gone.read_until(b"event: delta", 1)
    gone.close()
    held = RawStream(srv.port, "/v1/chat", chat_body(tokens=100000, interval_ms=50))
    held.read_until(b"event: delta", 1)
    wait_for(lambda: metric(srv.base_url, "streambridge_streams_total",
                            outcome="client_disconnected") == 1, timeout=10)
    return [held]


def _some_streams(srv: Server) -> list[RawStream]:
    _streams(srv, 2, options={"tokens": 2})
    return []


STATES: dict[str, State | None] = {
    # A rollout in progress: the hybrid front on its flag file, every conversation legacy.
    "rollout.md": State("hybrid-0", {"STREAMBRIDGE_FLAGS_OPERATOR_KEY": "op-secret"},
                        flags='mode = "legacy"\n', warmup=_some_streams),
    # A bad step: every conversation on async, async streams have run.
    "rollback.md": State("hybrid-100", {}, flags='mode = "async"\n', warmup=_async_share),
    "upstream-outage.md": State("async", {"STREAMBRIDGE_OPENAI_BASE_URL":
                                          "http://127.0.0.1:{dead_port}/v1"},
                                warmup=_outage),
    "slow-clients-and-memory.md": State("legacy-gthread", {}, warmup=_slow_clients),
    # Receiver down: every finished turn's delivery fails and is retried.
    "webhook-backlog.md": State("async", {
        "STREAMBRIDGE_WEBHOOK_URLS": "http://127.0.0.1:{dead_port}/hook",
        "STREAMBRIDGE_WEBHOOK_ALLOW": "127.0.0.1/32",
        "STREAMBRIDGE_WEBHOOK_SECRET": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
        warmup=_some_streams),
    # An instance about to be deployed over, with a short grace for the rehearsal.
    "deploys.md": State("legacy-gthread", {"STREAMBRIDGE_DRAIN_GRACE": "3"}),
    "proxy.md": State("async", {}),
    # Two hosts of different paths on one Redis, short leases as in tests/cluster.
    "several-hosts-redis.md": State("legacy-gevent", {
        "STREAMBRIDGE_REDIS_URL": "{redis_url}", "STREAMBRIDGE_REDIS_BLOCK": "0.5",
        "STREAMBRIDGE_REDIS_SOCKET_TIMEOUT": "2", "STREAMBRIDGE_REDIS_RETRY": "0.05",
        "STREAMBRIDGE_LEASE_TTL": "2", "STREAMBRIDGE_LEASE_RENEW": "0.3",
        "STREAMBRIDGE_SWEEP_INTERVAL": "0.3"},
        args=["--workers", "2"], redis=True, second="async"),
    "README.md": None,
}


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_runbook_commands_run_against_real_servers(doc: Path, tmp_path: Path) -> None:
    """All runnable commands of the doc succeed in order, and print what the doc shows."""
    blocks = [b for b in parse(doc.read_text(encoding="utf-8")) if b.skip_reason is None]
    lines = ["set -euo pipefail",
             # Servers the runbook started in the background end with the shell.
             "trap 'kill $(jobs -p) 2>/dev/null || true; wait || true' EXIT"]
    for b in blocks:
        for cmd in b.commands:
            lines += [f"echo {_quote('>>> ' + cmd.splitlines()[0])} >&2", cmd]
    script = "\n".join(lines) + "\n"
    (tmp_path / "migration").symlink_to(REPO / "migration")  # relative paths as in a checkout
    flags = tmp_path / "flags.toml"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "FLAGS": str(flags), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(REPO), "STREAMBRIDGE_DATABASE_PATH": str(tmp_path / "sb.sqlite3")}
    state = STATES[doc.name]
    srv, held, others = None, [], []
    redis_srv = RedisServer() if state is not None and state.redis else None
    redis_url = redis_srv.url if redis_srv is not None else ""
    if state is None:
        port = _free_port()
    else:
        if state.flags is not None:
            flags.write_text(state.flags, encoding="utf-8")
        server_env = {k: v.format(dead_port=_free_port(), redis_url=redis_url)
                      for k, v in state.env.items()}
        server_env["STREAMBRIDGE_DATABASE_PATH"] = str(tmp_path / "server.sqlite3")
        if state.flags is not None:
            server_env["STREAMBRIDGE_FLAGS_FILE"] = str(flags)
        try:
            srv = Server(state.path_id, server_env, state.args)
            if state.second is not None:
                others.append(Server(state.second, {
                    **server_env, "STREAMBRIDGE_DATABASE_PATH": str(tmp_path / "b.sqlite3")}))
                env["SB_B"] = others[0].base_url
        except BaseException:  # one refused to start: stop what did
            for server in [srv, *others]:
                if server is not None:
                    server.stop()
            if redis_srv is not None:
                redis_srv.close()
            raise
        if redis_srv is not None:
            env["REDIS_URL"] = redis_url
        # As a service manager would: reap the server when a runbook stops it, so the
        # runbook's `kill -0 "$SERVER_PID"` sees it gone (not a zombie of this test).
        threading.Thread(target=srv.proc.wait, daemon=True).start()
        held = state.warmup(srv) if state.warmup else []
        port = srv.port
        env["SERVER_PID"] = str(srv.proc.pid)
    env.update({"PORT": str(port), "SB": f"http://127.0.0.1:{port}"})
    proc = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # only the shell we started and its children
            proc.communicate()
        for raw in held:
            raw.close()
        for server in [srv, *others]:
            if server is not None:
                server.stop()
        if redis_srv is not None:
            redis_srv.close()
    logs = "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                   for p in tmp_path.glob("*.log"))
    if srv is not None:
        logs += f"\n--- server\n{srv.log()[-3000:]}"
    assert proc.returncode == 0, f"{doc.name} failed:\n{out}\n{err}{logs}"
    for b in blocks:
        for want in b.expected:
            assert want.lower() in out.lower(), f"{doc.name}: {want!r} not printed:\n{out}"
    for server in [srv, *others]:
        if server is not None:
            assert not server.problems(), server.problems()


def test_metric_greps_match_prometheus_label_order() -> None:
    """No runbook greps for a metric line whose labels are not in Prometheus' order."""
    label_list = re.compile(r"streambridge_\w+\\?\{([^}\n]*)")
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        assert "|| true" not in text, f"{doc.name}: an empty result must not be hidden"
        for m in label_list.finditer(text):
            names = re.findall(r"(\w+)=", m.group(1))
            assert names == sorted(names), f"{doc.name}: labels {names} are not sorted"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
