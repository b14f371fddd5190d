"""``streambridge compare`` end to end: real servers of two paths, a table and an HTML report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from async_core.cli._report import rows
from async_core.cli.compare import PathResult
from async_core.harness import StreamSample, percentile
from tests.servers import REPO


def test_percentile_is_nearest_rank() -> None:
    """p50 of 1..100 is 50, p99 is 99, and an empty list gives NaN."""
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) != percentile([], 0.5)


def test_ratios_are_to_the_first_path() -> None:
    """Every row after the first carries its ratio to the first path in brackets."""
    def result(path: str, step: float) -> PathResult:
        r = PathResult(path, batch_seconds=1.0)
        r.samples = [StreamSample(path, 0.0, [step, 2 * step, 3 * step], tokens=3)]
        return r

    table = rows([result("legacy-gthread", 0.010), result("async", 0.005)])
    assert table[1][3] == "10.00"  # TTFC p50 ms of the baseline, no ratio
    assert table[2][3] == "5.00 (0.50×)"


def test_compare_runs_every_path_interleaved_and_writes_a_self_contained_report(
        tmp_path: Path) -> None:
    """Two real paths, one command: a row per path, no failed stream, an offline HTML report."""
    report = tmp_path / "report.html"
    proc = subprocess.run(
        [sys.executable, "-m", "async_core.cli", "compare", "--paths", "legacy-gthread,async",
         "--rounds", "2", "--concurrency", "3", "--tokens", "12", "--interval-ms", "5",
         "--html", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert re.match(r"legacy-gthread\s+6\s+0\s+\d", lines["legacy-gthread"])
    assert re.match(r"async\s+6\s+0\s+\d+\.\d+ \(\d+\.\d+×\)", lines["async"])
    page = report.read_text(encoding="utf-8")
    assert page.count("<svg") == 3
    assert "<script" not in page and "<link" not in page and "src=" not in page


def _compare(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "async_core.cli", "compare", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=180, check=False, env=env)


def test_compare_measures_the_log_background_and_celery_rows_side_by_side() -> None:
    """One run: async, background, the Redis log read from a second server, a real Celery
    worker publishing through Redis pub/sub, a thread feeding a polled queue.Queue; its
    own redis-server; no failures."""
    proc = _compare("--paths", "async,async-background,async-redis,celery-pubsub,thread-queue",
                    "--rounds", "1", "--concurrency", "2", "--tokens", "6",
                    "--interval-ms", "5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    for row in ("async-background", "async-redis", "celery-pubsub", "thread-queue"):
        assert re.match(rf"{row}\s+2\s+0\s+\d+\.\d+ \(\d+\.\d+×\)", lines[row]), proc.stdout


def test_compare_without_redis_fails_in_one_line(tmp_path: Path) -> None:
    """An unreachable --redis-url, or no redis-server to start: one line, exit 2."""
    proc = _compare("--paths", "async-redis", "--redis-url", "redis://127.0.0.1:9/0")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "redis://127.0.0.1:9/0" in proc.stderr
    no_redis = {**os.environ, "PATH": str(tmp_path)}  # no redis-server on it
    proc = _compare("--paths", "celery-pubsub", "--rounds", "1", env=no_redis)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("streambridge compare: redis-server not found"), proc.stderr
    assert proc.stderr.count("\n") == 1
