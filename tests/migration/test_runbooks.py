"""The runbooks' commands, run for real: every ```console block, unless marked otherwise.

Marking (see migration/README.md): a block runs by default; a block preceded by
``<!-- not-runnable: reason -->`` is shown but not run, and the reason is required.
A runbook's blocks run in order in one bash shell (``set -euo pipefail``), so the
servers and variables it starts carry from block to block. ``$ `` starts a command,
a trailing ``\\`` continues it; the other lines are the output the doc promises, and
each must appear in what the commands printed (case-insensitive).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import REPO

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    port = _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PORT": str(port), "SB": f"http://127.0.0.1:{port}",
           "FLAGS": str(tmp_path / "flags.toml"), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(REPO), "STREAMBRIDGE_DATABASE_PATH": str(tmp_path / "sb.sqlite3")}
    proc = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # only the shell we started and its children
            proc.communicate()
    logs = "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                   for p in tmp_path.glob("*.log"))
    assert proc.returncode == 0, f"{doc.name} failed:\n{out}\n{err}{logs}"
    for b in blocks:
        for want in b.expected:
            assert want.lower() in out.lower(), f"{doc.name}: {want!r} not printed:\n{out}"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
