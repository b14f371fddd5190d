"""The CLI's extensions are optional: an absent package is skipped, a broken one is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from async_core.cli import build_cli
from async_core.cli._extensions import load_extensions


def test_an_extension_whose_package_is_absent_is_skipped() -> None:
    """Neither a missing package nor a package without a commands module is an error."""
    assert load_extensions(("no_such_package.commands", "async_core.no_such_module")) == []


def test_an_extension_that_fails_to_import_is_raised(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A present package whose own import fails says so, instead of losing its commands."""
    (tmp_path / "sb_broken_ext").mkdir()
    (tmp_path / "sb_broken_ext" / "__init__.py").write_text("")
    (tmp_path / "sb_broken_ext" / "commands.py").write_text("import sb_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="sb_missing_dependency"):
        load_extensions(("sb_broken_ext.commands",))


def test_the_installed_extensions_add_their_paths_and_commands() -> None:
    """Here both are installed: every path and command of the CLI is there."""
    cli = build_cli()
    assert list(cli.paths) == ["async", "legacy", "hybrid"]
    assert list(cli.commands) == ["compare", "db", "flags"]
