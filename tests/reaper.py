"""Servers a test is done with, stopped without making the next test wait for them.

A server's SIGTERM, drain and exit take 0.2-2.3 s (gunicorn's master reaps its workers on
a poll, its gevent worker looks at its ``alive`` flag once a second). A test that made a
server of its own, and a pool switching to the next path, only need the process gone
before the module ends: they *retire* it (SIGTERM now) and the module's last teardown
*reaps* every retired server at once (wait for the exit, SIGKILL past the timeout, then
read its log). What the old synchronous stop checked is still checked, naming the test
that started the server: a traceback or a leaked task in its log fails the module.
"""

from __future__ import annotations

from tests.servers import Server


class Reaper:
    """Retired servers of the current module, not yet waited for."""

    def __init__(self) -> None:
        self._retired: list[tuple[str, Server, int]] = []

    def retire(self, srv: Server, owner: str, since: int = 0) -> None:
        """SIGTERM ``srv`` now; its exit and its log from offset ``since`` are checked
        at :meth:`reap` (``owner``: who started it, for the message)."""
        srv.terminate()
        self._retired.append((owner, srv, since))

    def reap(self) -> list[str]:
        """Wait for every retired server; return the bad lines their logs hold."""
        problems: list[str] = []
        retired, self._retired = self._retired, []
        for owner, srv, since in retired:
            srv.stop()
            text = srv.log_since(since, whole_lines=False)[0]
            problems += [f"[{srv.path_id}, started by {owner}] {line}"
                         for line in Server.bad_lines(text)]
        return problems


REAPER = Reaper()
