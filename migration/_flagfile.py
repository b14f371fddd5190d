"""The flag file: load (JSON or TOML), reload without a restart, write atomically.

``FlagStore.current()`` is called once per request by the hybrid front; it looks at
the file at most once per ``interval`` (one ``os.stat``), and re-reads it only when
its (mtime, size, inode) changed. A file that fails to parse is logged and ignored:
the last good configuration stays in force (a typo never flips traffic). A file
that disappears falls back to the base configuration from the environment.

``streambridge flags set`` writes a temporary file next to the target, fsyncs it and
``os.replace``s it over the target: readers see the old file or the new one, never
half of one, and the new inode is noticed even within one mtime tick.

Environment (the base under the file's keys):
``STREAMBRIDGE_FLAGS_FILE`` the file, ``STREAMBRIDGE_FLAGS_MODE`` the mode when the
file sets none (default ``legacy``), ``STREAMBRIDGE_FLAGS_OPERATOR_KEY`` the key that
unlocks ``X-Stream-Path-Override`` (better kept out of the file).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from async_core import load_settings

from .flags import OLDER_AGENT_KEYS, OLDER_KEYS, FlagConfig, parse_mode, upgrade_keys

log = logging.getLogger("streambridge.flags")

ENV_FILE = "STREAMBRIDGE_FLAGS_FILE"
Signature = tuple[int, int, int] | None


@dataclass(frozen=True, kw_only=True, slots=True)
class FlagSettings:
    """Where the flags come from, read once by ``async_core.load_settings``.

    Attributes:
        flags_file: the flag file (``STREAMBRIDGE_FLAGS_FILE``); empty: none.
        flags_mode: the mode when the file sets none (``STREAMBRIDGE_FLAGS_MODE``).
        flags_operator_key: the key that unlocks ``X-Stream-Path-Override``
            (``STREAMBRIDGE_FLAGS_OPERATOR_KEY``).
    """

    flags_file: str = ""
    flags_mode: str = "legacy"
    flags_operator_key: str = field(default="", repr=False)  # a secret: never logged

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FlagSettings:
        """Read the ``STREAMBRIDGE_FLAGS_*`` variables (default: ``os.environ``)."""
        return load_settings(cls, environ)


def base_config(environ: Mapping[str, str] | None = None) -> FlagConfig:
    """The configuration from the environment alone (what the file's keys override).

    Raises:
        ValueError: ``STREAMBRIDGE_FLAGS_MODE`` is not a mode.
    """
    settings = FlagSettings.from_env(environ)
    try:
        mode = parse_mode(settings.flags_mode)
    except ValueError as error:
        raise ValueError(f"STREAMBRIDGE_FLAGS_MODE: {error}") from None
    return FlagConfig(mode=mode, operator_key=settings.flags_operator_key)


def read_file(path: str) -> dict[str, Any]:
    """Read a flag file: TOML when it ends in ``.toml``, JSON otherwise.

    Raises:
        ValueError: the file does not parse or is not a table/object.
        OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        raw = f.read()
    try:
        data = tomllib.loads(raw.decode()) if path.endswith(".toml") else json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be an object")
    return data


def _toml_value(value: Any) -> str:
    return str(value) if isinstance(value, int) else json.dumps(str(value))


def dumps(data: Mapping[str, Any], toml: bool) -> str:
    """Serialize a flag file's data (JSON, or the small TOML subset it needs)."""
    if not toml:
        return json.dumps(data, indent=2, sort_keys=True) + "\n"
    lines = [f"{k} = {_toml_value(v)}" for k, v in sorted(data.items()) if k != "agents"]
    for name, flag in sorted(dict(data.get("agents") or {}).items()):
        lines += ["", f"[agents.{json.dumps(name)}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in sorted(flag.items())]
    return "\n".join(lines) + "\n"


def write_file(path: str, data: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``data`` atomically (temp file, fsync, ``os.replace``).

    The new file keeps the old one's mode and owner (a front running as another
    user must still read it); a new file gets ``0666 & ~umask`` like any file. A
    missing directory is created.

    Raises:
        OSError: the directory or file cannot be written (or the owner kept).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    try:
        old: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        old = None
    fd, tmp = tempfile.mkstemp(prefix=".flags-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dumps(data, path.endswith(".toml")))
            f.flush()
            if old is None:
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(f.fileno(), 0o666 & ~umask)
            else:
                os.fchmod(f.fileno(), old.st_mode & 0o7777)
                if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                    os.fchown(f.fileno(), old.st_uid, old.st_gid)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


class FlagStore:
    """The current flag configuration, reloaded from its file when that changes.

    Args:
        path: the flag file (None: the base configuration, never reloaded).
        base: the configuration under the file's keys (default: from the environment).
        interval: seconds between two looks at the file.
        clock: monotonic clock (tests pass a fake one).
    """

    def __init__(self, path: str | None, base: FlagConfig | None = None, *,
                 interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.path, self.base = path or None, base or base_config()
        self._interval, self._clock = interval, clock
        self._config = self.base
        self._sig: Signature = None
        self._next_check = -float("inf")
        self.current()

    def current(self) -> FlagConfig:
        """Return the configuration in force (cheap: one ``stat`` per interval at most)."""
        if self.path is None:
            return self._config
        now = self._clock()
        if now < self._next_check:
            return self._config
        self._next_check = now + self._interval
        try:
            st = os.stat(self.path)
            sig: Signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            sig = None
        if sig == self._sig:
            return self._config
        self._sig = sig
        if sig is None:
            log.warning("flag file %s is missing: using the environment's flags", self.path)
            self._config = self.base
            return self._config
        try:
            self._config = FlagConfig.from_dict(read_file(self.path), self.base)
        except (OSError, ValueError) as e:
            log.error("flag file %s not applied, keeping the previous flags: %s", self.path, e)
            return self._config
        log.info("flags loaded from %s: %s", self.path,
                 json.dumps(self._config.to_dict(), sort_keys=True))
        return self._config


def apply_settings(data: dict[str, Any], assignments: list[str],
                   unset: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` assignments and ``--unset`` keys to a flag file's data.

    Keys: ``mode``, ``sticky``, ``tenant_header``, ``salt``, ``legacy_form``,
    ``async_form``, ``operator_key``, ``agents.<name>.mode``, ``agents.<name>.form``;
    ``--unset`` also takes ``agents.<name>`` (the whole override). The older keys
    (``legacy_impl``, ``async_impl``, ``agents.<name>.impl``) are read as the new ones,
    in ``data`` and in the arguments; what is written has the new keys only.

    Raises:
        ValueError: a malformed assignment.
    """
    out = upgrade_keys(json.loads(json.dumps(data)))  # a deep copy of plain data
    agents: dict[str, dict[str, Any]] = out.setdefault("agents", {})
    for key in map(_current_key, unset):
        parts = key.split(".")
        if parts[0] == "agents" and len(parts) in (2, 3):
            flag = agents.get(parts[1], {})
            if len(parts) == 2:
                agents.pop(parts[1], None)
            else:
                flag.pop(parts[2], None)
        else:
            out.pop(key, None)
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {item!r}")
        key = _current_key(key)
        parts = key.split(".")
        typed: Any = parse_mode(value) if parts[-1] == "mode" else value
        if parts[0] == "agents":
            if len(parts) != 3 or parts[2] not in ("mode", "form"):
                raise ValueError(f"expected agents.<name>.mode or agents.<name>.form: {key!r}")
            agents.setdefault(parts[1], {})[parts[2]] = typed
        else:
            out[key] = typed
    out["agents"] = {k: v for k, v in agents.items() if v}
    if not out["agents"]:
        del out["agents"]
    return out


def _current_key(key: str) -> str:
    """``key`` in the current spelling (``legacy_impl`` → ``legacy_form``, ``agents.x.impl``
    → ``agents.x.form``)."""
    parts = key.split(".")
    if len(parts) == 1:
        return OLDER_KEYS.get(key, key)
    if parts[0] == "agents" and len(parts) == 3:
        return ".".join([*parts[:2], OLDER_AGENT_KEYS.get(parts[2], parts[2])])
    return key


def add_parser(sub: Any) -> None:
    """Add ``flags show`` and ``flags set`` to the ``streambridge`` parser."""
    flags = sub.add_parser("flags", help="show or change the migration flag file")
    actions = flags.add_subparsers(dest="flags_command", required=True)
    for name, text in (("show", "print the flags in force (the operator key redacted)"),
                       ("set", "change settings and write the file atomically")):
        p = actions.add_parser(name, help=text)
        p.add_argument("--file", default=None,
                       help=f"the flag file, .json or .toml (default: ${ENV_FILE})")
        if name == "set":
            p.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                           help="e.g. mode=25 sticky=tenant agents.research.mode=legacy "
                                "agents.research.form=sync")
            p.add_argument("--unset", action="append", default=[], metavar="KEY",
                           help="remove a setting, e.g. agents.research")


def run(args: Any) -> int:
    """Run ``flags show`` / ``flags set``; returns the exit status."""
    import sys

    path: str | None = args.file or FlagSettings.from_env().flags_file or None
    if args.flags_command == "show":
        try:
            config = (FlagConfig.from_dict(read_file(path), base_config()) if path
                      else base_config())
        except FileNotFoundError:
            print(f"streambridge: no flag file at {path} (check --file or ${ENV_FILE}; "
                  "create it with flags set)", file=sys.stderr)
            return 1
        except (OSError, ValueError) as e:
            reason = " ".join(str(e).split())
            where = "" if reason.startswith(str(path)) else f"{path}: "
            print(f"streambridge: {where}{reason}", file=sys.stderr)
            return 1
        print(json.dumps({"file": path, **config.to_dict()}, indent=2, sort_keys=True))
        return 0
    if not path:
        print(f"streambridge: flags set needs --file or ${ENV_FILE}", file=sys.stderr)
        return 2
    try:
        data = read_file(path) if os.path.exists(path) else {}
        data = apply_settings(data, args.settings, args.unset)
        config = FlagConfig.from_dict(data, base_config())  # validate before writing
        write_file(path, data)
    except (OSError, ValueError) as e:
        print(f"streambridge: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(json.dumps({"file": path, **config.to_dict()}, indent=2, sort_keys=True))
    return 0
