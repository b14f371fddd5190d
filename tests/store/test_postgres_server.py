"""Real servers on a real PostgreSQL: `streambridge db upgrade`, then transcripts on each path."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.clients import chat_body, stream, wait_for
from tests.servers import REPO, Server
from tests.store.conftest import PostgresCluster


def db_command(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``streambridge db ...`` against ``url``."""
    return subprocess.run([sys.executable, "-m", "migration.cli", "db", *args], cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "STREAMBRIDGE_DATABASE_URL": url},
                          capture_output=True, text=True, timeout=60)


def test_a_server_refuses_an_unmigrated_postgres_and_says_what_to_run(
        postgres: PostgresCluster) -> None:
    """PostgreSQL is never migrated implicitly: the server names the command instead."""
    url = postgres.create_database()
    with pytest.raises(RuntimeError) as info:
        Server("async", {"STREAMBRIDGE_DATABASE_URL": url})
    assert "streambridge db upgrade" in str(info.value)


@pytest.mark.parametrize("path_id", ["async", "legacy-gthread"])
def test_transcripts_on_postgres(postgres: PostgresCluster, path_id: str) -> None:
    """After `db upgrade`, a stream's transcript is stored in PostgreSQL and served back."""
    url = postgres.create_database()
    done = db_command(url, "upgrade")
    assert done.returncode == 0, done.stderr
    assert "revision: 0001" in done.stdout
    srv = Server(path_id, {"STREAMBRIDGE_DATABASE_URL": url})
    try:
        r = stream(srv.url("/v1/chat"), chat_body("demo"))
        cid = r.headers["x-conversation-id"]

        def stored() -> list[dict[str, str]] | None:
            resp = httpx.get(srv.url(f"/v1/conversations/{cid}"), timeout=10)
            turns = resp.json()["turns"] if resp.status_code == 200 else []
            return turns if turns and turns[-1]["outcome"] == "completed" else None

        turns = wait_for(stored, timeout=10)
        assert turns[-1]["content"] == r.text()
    finally:
        srv.stop()
    assert not srv.problems(), "\n".join(srv.problems())
