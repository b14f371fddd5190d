"""One process, two paths: a service shares another's parts (the hybrid front's branches),
and one word, ``form``, says which form of an agent runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from async_core import Outcome, Settings, StreamService, load_settings, parse_chat
from async_core.exceptions import Overloaded


def _call(settings: Settings, **body: object) -> object:
    data = json.dumps({"message": "hi", "options": {"tokens": 2}, **body}).encode()
    return parse_chat("native", data, headers={}, query={}, default_agent="demo",
                      max_body=settings.max_body_bytes, max_messages=settings.max_messages)


@pytest.mark.anyio
async def test_a_sharing_service_has_the_owners_parts_and_its_own_label_and_form(
        tmp_path: Path) -> None:
    """The legacy branch's service admits against the native one's slots, writes the same
    log and store, labels its own path, and leaves opening and closing to the owner."""
    settings = Settings(database_path=str(tmp_path / "sb.sqlite3"), max_streams=1,
                        admission_timeout=0)
    native = StreamService(settings, path="async")
    legacy = StreamService(settings, path="legacy", shares=native)
    await native.start()
    try:
        await legacy.start()  # opens nothing: the owner did
        assert legacy.persistence is native.persistence is not None
        assert legacy.log is native.log
        assert (legacy.lifecycle, legacy.admission, legacy.runs, legacy.hooks) == (
            native.lifecycle, native.admission, native.runs, native.hooks)
        assert (native.path, legacy.path) == ("async", "legacy")
        session = await legacy.open(_call(settings))  # type: ignore[arg-type]
        assert legacy.headers(session)["X-Stream-Path"] == "legacy"
        with pytest.raises(Overloaded):  # the one slot is the process', whichever path
            await native.open(_call(settings))  # type: ignore[arg-type]
        await session.finish(Outcome.CLIENT_DISCONNECTED)  # type: ignore[union-attr]
        await legacy.aclose()  # closes nothing: the owner still serves
        again = await native.open(_call(settings))  # type: ignore[arg-type]
        await again.finish(Outcome.CLIENT_DISCONNECTED)  # type: ignore[union-attr]
    finally:
        await native.aclose()
    assert native.persistence is None and legacy.persistence is None


def test_a_sharing_service_takes_the_owners_hooks_and_lifecycle() -> None:
    """Hooks or a lifecycle of its own would split what the process shares: refused."""
    native = StreamService(Settings(database_url="none"), path="async")
    with pytest.raises(ValueError, match="shares another's parts"):
        StreamService(native.settings, path="legacy", shares=native, hooks=(print,))  # type: ignore[arg-type]


@pytest.mark.parametrize(("env", "form"), [
    ({}, None), ({"STREAMBRIDGE_AGENT_FORM": " "}, None),
    ({"STREAMBRIDGE_AGENT_FORM": "sync"}, "sync"), ({"STREAMBRIDGE_SYNC_AGENTS": "1"}, "sync"),
    ({"STREAMBRIDGE_SYNC_AGENTS": "0"}, None),
    ({"STREAMBRIDGE_AGENT_FORM": "async", "STREAMBRIDGE_SYNC_AGENTS": "1"}, "async")])
def test_agent_form_is_one_setting_and_reads_its_older_spelling(
        env: dict[str, str], form: str | None) -> None:
    """STREAMBRIDGE_SYNC_AGENTS=1 still means sync; STREAMBRIDGE_AGENT_FORM wins over it."""
    assert Settings.from_env(env).agent_form == form
    assert Settings(agent_form="").agent_form is None  # type: ignore[arg-type]  # older default


def test_the_form_decides_which_form_runs_on_each_path() -> None:
    """The setting wins over the path's default; with neither, async."""
    for setting, path_default, form in ((None, None, "async"), (None, "sync", "sync"),
                                        ("async", "sync", "async"), ("sync", None, "sync")):
        service = StreamService(Settings(database_url="none", agent_form=setting),  # type: ignore[arg-type]
                                path="async", form=path_default)  # type: ignore[arg-type]
        assert service.form == form


def test_a_bad_agent_form_names_its_variable() -> None:
    """A bad value stops the loader (one line at start-up), not the first stream."""
    with pytest.raises(ValueError, match="STREAMBRIDGE_AGENT_FORM must be sync or async"):
        Settings.from_env({"STREAMBRIDGE_AGENT_FORM": "both"})


@dataclass(frozen=True, kw_only=True, slots=True)
class _Example:
    name: str = "x"
    count: int = 1
    on: bool = False


def test_load_settings_reads_any_value_object_with_the_same_rules() -> None:
    """Another package's settings parse like Settings: blank is the default, errors name
    the variable."""
    assert load_settings(_Example, {"STREAMBRIDGE_NAME": " y ", "STREAMBRIDGE_COUNT": "3",
                                    "STREAMBRIDGE_ON": "yes"}) == _Example(name="y", count=3,
                                                                         on=True)
    assert load_settings(_Example, {"STREAMBRIDGE_COUNT": ""}, name="z") == _Example(name="z")
    with pytest.raises(ValueError, match="STREAMBRIDGE_COUNT='many' is not a valid int"):
        load_settings(_Example, {"STREAMBRIDGE_COUNT": "many"})
