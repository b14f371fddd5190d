"""``streambridge flags set`` replaces the file atomically and keeps its mode and owner."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import REPO


def _flags(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "migration.cli", "flags", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)


def test_flags_set_keeps_the_files_mode(tmp_path: Path) -> None:
    """A 0644 file stays 0644 (it was rewritten as 0600: a front as another user lost it)."""
    path = tmp_path / "flags.toml"
    path.write_text('mode = "legacy"\n')
    path.chmod(0o644)
    inode = path.stat().st_ino
    assert _flags("set", "--file", str(path), "mode=25").returncode == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.stat().st_ino != inode  # replaced, not rewritten in place
    assert "mode = 25" in path.read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_flags_set_keeps_the_files_owner(tmp_path: Path) -> None:
    """A file owned by the front's user stays that user's after root runs flags set."""
    nobody = pwd.getpwnam("nobody")
    path = tmp_path / "flags.toml"
    path.write_text('mode = "legacy"\n')
    os.chown(path, nobody.pw_uid, nobody.pw_gid)
    path.chmod(0o640)
    assert _flags("set", "--file", str(path), "mode=async").returncode == 0
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert stat.S_IMODE(st.st_mode) == 0o640


def test_flags_set_creates_a_missing_directory_with_a_readable_file(tmp_path: Path) -> None:
    """The default path's directory may not exist yet: it is created, no traceback."""
    path = tmp_path / "etc" / "streambridge" / "flags.toml"
    done = _flags("set", "--file", str(path), "mode=legacy")
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044 & ~_umask()
    assert _flags("show", "--file", str(path)).returncode == 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
