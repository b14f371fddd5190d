"""The migration flag: the pure decision, its configuration, the file and the CLI."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migration._flagfile import FlagStore, apply_settings, base_config, read_file, write_file
from migration.cli import main
from migration.flags import (
    AgentFlag,
    FlagConfig,
    RouteRequest,
    bucket_of,
    decide,
    form_for,
    parse_mode,
)

KEY = "s3cret-operator-key"


def _conversation_in(bucket_range: range) -> str:
    """A conversation id whose bucket falls in ``bucket_range``."""
    return next(c for c in (f"c{i}" for i in itertools.count())
                if bucket_of(c) in bucket_range)


# -- modes -------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "mode"), [
    ("legacy", "legacy"), ("async", "async"), (" ASYNC ", "async"), (0, 0), (100, 100),
    (25, 25), ("25", 25), ("25%", 25), (" 7 % ", 7)])
def test_parse_mode_accepts_paths_and_percentages(raw: object, mode: object) -> None:
    """Modes are legacy, async, or a percentage as int, digits or 'N%'."""
    assert parse_mode(raw) == mode


@pytest.mark.parametrize("raw", [-1, 101, "101", "half", "", None, True, 2.5, "-5"])
def test_parse_mode_refuses_anything_else(raw: object) -> None:
    """Out-of-range numbers, booleans, floats and words are errors naming the value."""
    with pytest.raises(ValueError, match="mode must be"):
        parse_mode(raw)


@pytest.mark.parametrize(("field", "value"), [
    ("sticky", "user"), ("legacy_form", "threads"), ("async_form", "gevent")])
def test_config_refuses_bad_values(field: str, value: str) -> None:
    """Every enumerated setting is checked when the config is built."""
    with pytest.raises(ValueError, match=field):
        FlagConfig(**{field: value})  # type: ignore[arg-type]


def test_config_is_frozen_and_hides_the_operator_key() -> None:
    """A config cannot change after it is built, and its repr never shows the key."""
    config = FlagConfig(operator_key=KEY, agents={"a": {"mode": "async"}})
    with pytest.raises(AttributeError):
        config.mode = "async"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.agents["b"] = AgentFlag()  # type: ignore[index]
    assert KEY not in repr(config)
    assert config.to_dict()["operator_key"] == "<set>"
    assert config.agents["a"] == AgentFlag(mode="async")


def test_from_dict_refuses_unknown_keys_and_keeps_the_base() -> None:
    """Unknown settings are errors; missing ones come from the base config."""
    base = FlagConfig(mode=30, operator_key=KEY)
    assert FlagConfig.from_dict({"sticky": "tenant"}, base) == FlagConfig(
        mode=30, sticky="tenant", operator_key=KEY)
    with pytest.raises(ValueError, match="unknown flag setting"):
        FlagConfig.from_dict({"mood": "async"})


# -- buckets -----------------------------------------------------------------------

def test_buckets_are_pinned_so_no_release_reshuffles_conversations() -> None:
    """blake2b buckets are fixed values: a change here would flip live conversations."""
    pinned = {k: bucket_of(k) for k in ("conv-1", "conv-2", "tenant-a")}
    assert pinned == {"conv-1": 64, "conv-2": 20, "tenant-a": 7}
    salted = [bucket_of(f"c{i}", salt="2027") == bucket_of(f"c{i}") for i in range(100)]
    assert salted.count(True) < 10, "a new salt reshuffles the buckets"


def test_buckets_spread_evenly() -> None:
    """10,000 ids fill every bucket, none with more than twice its share."""
    counts = [0] * 100
    for i in range(10_000):
        counts[bucket_of(f"conversation-{i}")] += 1
    assert min(counts) > 50 and max(counts) < 200


@given(st.text(min_size=1, max_size=40), st.integers(0, 99), st.integers(0, 100))
def test_raising_the_percentage_only_moves_conversations_to_async(
        key: str, low: int, high: int) -> None:
    """A conversation on async at p% stays on async at any higher percentage."""
    low, high = min(low, high), max(low, high)
    at = {p: decide(FlagConfig(mode=p), RouteRequest("demo", key)).path for p in (low, high)}
    if at[low] == "async":
        assert at[high] == "async"


@given(st.text(max_size=40), st.text(max_size=20), st.integers(0, 100),
       st.sampled_from(["conversation", "tenant"]))
def test_decision_is_a_pure_function(key: str, tenant: str, mode: int, sticky: str) -> None:
    """The same config and request always give the same decision."""
    config = FlagConfig(mode=mode, sticky=sticky)  # type: ignore[arg-type]
    request = RouteRequest("demo", key, tenant)
    assert decide(config, request) == decide(config, request)
    assert decide(config, request).path in ("legacy", "async")


# -- the decision table --------------------------------------------------------------

LOW, HIGH = _conversation_in(range(0, 10)), _conversation_in(range(90, 100))


@pytest.mark.parametrize(("mode", "conversation", "path", "reason"), [
    ("legacy", LOW, "legacy", "mode"), ("legacy", HIGH, "legacy", "mode"),
    ("async", LOW, "async", "mode"), ("async", HIGH, "async", "mode"),
    (0, LOW, "legacy", "mode"), (100, HIGH, "async", "mode"),
    (0, "", "legacy", "mode"), (100, "", "async", "mode"),
    (50, LOW, "async", "bucket"), (50, HIGH, "legacy", "bucket"),
    (10, LOW, "async", "bucket"), (90, HIGH, "legacy", "bucket"),
    (50, "", "legacy", "no_key"),
])
def test_global_mode(mode: object, conversation: str, path: str, reason: str) -> None:
    """Fixed modes ignore the key; a percentage sends buckets below it to async."""
    d = decide(FlagConfig(mode=mode), RouteRequest("demo", conversation))  # type: ignore[arg-type]
    assert (d.path, d.reason) == (path, reason)
    assert d.form == ("sync" if path == "legacy" else "async")
    assert (d.bucket is not None) == (reason == "bucket")


def test_every_conversation_of_a_bucket_gets_the_same_path_at_every_percentage() -> None:
    """Exhaustive over percentages: path is async exactly when bucket < percentage."""
    ids = [f"c{i}" for i in range(300)]
    for pct in range(1, 100):
        for cid in ids:
            d = decide(FlagConfig(mode=pct), RouteRequest("demo", cid))
            assert d.path == ("async" if bucket_of(cid) < pct else "legacy")


def test_tenant_stickiness_uses_the_tenant_then_falls_back_to_the_conversation() -> None:
    """sticky=tenant buckets by tenant; without a tenant header the conversation decides."""
    config = FlagConfig(mode=50, sticky="tenant")
    tenant = _conversation_in(range(0, 50))
    for cid in (LOW, HIGH):
        assert decide(config, RouteRequest("demo", cid, tenant=tenant)).path == "async"
    assert decide(config, RouteRequest("demo", HIGH)).path == "legacy"
    assert decide(config, RouteRequest("demo", LOW)).path == "async"
    assert decide(FlagConfig(mode=50), RouteRequest("demo", HIGH, tenant=tenant)).path == \
        "legacy", "sticky=conversation ignores the tenant"


@pytest.mark.parametrize(("agent_mode", "global_mode", "path"), [
    ("legacy", "async", "legacy"), ("async", "legacy", "async"),
    (100, "legacy", "async"), (0, "async", "legacy"), (None, "async", "async")])
def test_per_agent_mode_wins_over_the_global_mode(agent_mode: object, global_mode: str,
                                                  path: str) -> None:
    """An agent's own mode replaces the global one for that agent only."""
    config = FlagConfig(mode=global_mode,  # type: ignore[arg-type]
                        agents={"research": AgentFlag(mode=agent_mode)})  # type: ignore[arg-type]
    d = decide(config, RouteRequest("research", LOW))
    assert d.path == path
    assert d.reason == ("agent" if agent_mode is not None else "mode")
    assert decide(config, RouteRequest("demo", LOW)).path == global_mode


def test_per_agent_percentage_buckets_like_the_global_one() -> None:
    """agents.x.mode=50 splits that agent's conversations by bucket."""
    config = FlagConfig(mode="legacy", agents={"x": AgentFlag(mode=50)})
    assert decide(config, RouteRequest("x", LOW)).path == "async"
    assert decide(config, RouteRequest("x", HIGH)).path == "legacy"


@pytest.mark.parametrize(("path", "legacy_form", "async_form", "agent_form", "form"), [
    ("legacy", "sync", "async", None, "sync"), ("async", "sync", "async", None, "async"),
    ("legacy", "async", "async", None, "async"), ("async", "sync", "sync", None, "sync"),
    ("legacy", "sync", "async", "async", "async"), ("async", "sync", "async", "sync", "sync")])
def test_agent_form_follows_path_default_then_agent_override(
        path: str, legacy_form: str, async_form: str, agent_form: str | None,
        form: str) -> None:
    """The form is the agent's override, else the default of the path that serves it."""
    config = FlagConfig(mode=path, legacy_form=legacy_form,  # type: ignore[arg-type]
                        async_form=async_form,  # type: ignore[arg-type]
                        agents={"a": AgentFlag(form=agent_form)})  # type: ignore[arg-type]
    assert decide(config, RouteRequest("a", "c")).form == form
    assert form_for(config, "a", path) == form  # type: ignore[arg-type]


def test_a_flag_file_with_the_older_impl_keys_reads_as_the_form_keys() -> None:
    """Files written before issue 12 (``impl``, ``legacy_impl``, ``async_impl``) keep working."""
    old = {"mode": "async", "legacy_impl": "async", "async_impl": "sync",
           "agents": {"a": {"impl": "async"}, "b": {"mode": "legacy"}}}
    config = FlagConfig.from_dict(old)
    assert (config.legacy_form, config.async_form) == ("async", "sync")
    assert config.agents == {"a": AgentFlag(form="async"), "b": AgentFlag(mode="legacy")}
    assert decide(config, RouteRequest("a", "c")).form == "async"
    assert decide(config, RouteRequest("b", "c")).form == "async"  # legacy_form
    assert "impl" not in json.dumps(config.to_dict())
    with pytest.raises(ValueError, match="legacy_impl is the older spelling of legacy_form"):
        FlagConfig.from_dict({"legacy_impl": "sync", "legacy_form": "async"})
    with pytest.raises(ValueError, match=r"agents\.a\.impl is the older spelling"):
        FlagConfig.from_dict({"agents": {"a": {"impl": "sync", "form": "sync"}}})


def test_flags_set_rewrites_an_older_file_with_the_form_keys() -> None:
    """``flags set`` reads the older keys (in the file and the arguments), writes the new."""
    old = {"legacy_impl": "sync", "agents": {"a": {"impl": "sync", "mode": "async"}}}
    assert apply_settings(old, ["async_impl=sync", "agents.b.impl=async"], []) == {
        "legacy_form": "sync", "async_form": "sync",
        "agents": {"a": {"form": "sync", "mode": "async"}, "b": {"form": "async"}}}
    assert apply_settings(old, [], ["agents.a.impl", "legacy_impl"]) == {
        "agents": {"a": {"mode": "async"}}}


@pytest.mark.parametrize(("configured", "presented", "override", "honoured"), [
    (KEY, KEY, "async", True), (KEY, KEY, "legacy", True), (KEY, KEY, " Async ", True),
    (KEY, "wrong", "async", False), (KEY, "", "async", False), ("", "", "async", False),
    ("", KEY, "async", False), (KEY, KEY, "sideways", False)])
def test_header_override_needs_the_operator_key(configured: str, presented: str,
                                                override: str, honoured: bool) -> None:
    """X-Stream-Path-Override wins over everything, but only with the configured key."""
    config = FlagConfig(mode="legacy", operator_key=configured,
                        agents={"demo": AgentFlag(mode="legacy")})
    d = decide(config, RouteRequest("demo", LOW, override=override, presented_key=presented))
    if honoured:
        assert (d.path, d.reason, d.override_refused) == (override.strip().lower(),
                                                          "header", False)
    else:
        assert (d.path, d.reason, d.override_refused) == ("legacy", "agent", True)


def test_no_override_header_is_not_a_refusal() -> None:
    """override_refused is only set when an override was actually attempted."""
    assert decide(FlagConfig(), RouteRequest("demo", LOW)).override_refused is False


# -- the file ----------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_store_reloads_a_changed_file_at_most_once_per_interval(tmp_path: Path) -> None:
    """A change is seen at the next look; looks happen at most once per interval."""
    path, clock = str(tmp_path / "flags.json"), FakeClock()
    write_file(path, {"mode": 10})
    store = FlagStore(path, FlagConfig(), clock=clock)
    assert store.current().mode == 10
    write_file(path, {"mode": 90})
    clock.now = 0.5
    assert store.current().mode == 10, "looked again within the interval"
    clock.now = 1.0
    assert store.current().mode == 90


def test_store_keeps_the_last_good_flags_when_the_file_breaks(tmp_path: Path) -> None:
    """A file that does not parse (or has a bad value) changes nothing."""
    path, clock = tmp_path / "flags.json", FakeClock()
    write_file(str(path), {"mode": 30})
    store = FlagStore(str(path), FlagConfig(), clock=clock)
    for bad in ("{not json", json.dumps({"mode": 300}), json.dumps([1]),
                json.dumps({"mood": 1})):
        path.write_text(bad)
        clock.now += 1
        assert store.current().mode == 30


def test_store_falls_back_to_the_base_when_the_file_goes(tmp_path: Path) -> None:
    """No file (or a removed one): the environment's configuration applies."""
    path, clock = tmp_path / "flags.toml", FakeClock()
    store = FlagStore(str(path), FlagConfig(mode=5), clock=clock)
    assert store.current().mode == 5
    write_file(str(path), {"mode": "async"})
    clock.now += 1
    assert store.current().mode == "async"
    path.unlink()
    clock.now += 1
    assert store.current().mode == 5


def test_toml_and_json_files_round_trip(tmp_path: Path) -> None:
    """The writer's TOML and JSON read back as the same data."""
    data = {"mode": 25, "sticky": "tenant", "salt": 'a"b',
            "agents": {"re search": {"mode": "legacy", "form": "sync"}, "x": {"mode": 40}}}
    for name in ("f.toml", "f.json"):
        write_file(str(tmp_path / name), data)
        assert read_file(str(tmp_path / name)) == data
        assert FlagConfig.from_dict(data).agents["x"] == AgentFlag(mode=40)
    assert sorted(os.listdir(tmp_path)) == ["f.json", "f.toml"], "temp files left behind"


def test_base_config_reads_the_environment() -> None:
    """STREAMBRIDGE_FLAGS_MODE and STREAMBRIDGE_FLAGS_OPERATOR_KEY build the base."""
    config = base_config({"STREAMBRIDGE_FLAGS_MODE": "50%",
                          "STREAMBRIDGE_FLAGS_OPERATOR_KEY": KEY})
    assert (config.mode, config.operator_key) == (50, KEY)
    assert base_config({}).mode == "legacy"


def test_apply_settings_sets_and_unsets() -> None:
    """key=value assignments, agent overrides and --unset edit the file's data."""
    data = apply_settings({"mode": 5, "agents": {"a": {"mode": "async"}}},
                          ["mode=30%", "agents.b.form=sync", "agents.b.mode=legacy"],
                          ["agents.a"])
    assert data == {"mode": 30, "agents": {"b": {"form": "sync", "mode": "legacy"}}}
    assert apply_settings(data, [], ["agents.b.mode", "mode"]) == {
        "agents": {"b": {"form": "sync"}}}
    for bad in (["mode"], ["agents.b=async"], ["agents.b.colour=red"], ["mode=200"]):
        with pytest.raises(ValueError, match="expected|mode must be"):
            apply_settings({}, bad, [])


def test_cli_set_writes_the_file_and_show_prints_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`flags set` validates before writing; `flags show` redacts the key."""
    path = str(tmp_path / "flags.toml")
    assert main(["flags", "set", "--file", path, "mode=20", "agents.demo.mode=async",
                 f"operator_key={KEY}"]) == 0
    assert read_file(path)["mode"] == 20
    assert main(["flags", "set", "--file", path, "mode=nonsense"]) == 2
    assert read_file(path)["mode"] == 20, "a bad value must not reach the file"
    capsys.readouterr()
    assert main(["flags", "show", "--file", path]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["mode"] == 20 and shown["agents"] == {"demo": {"mode": "async"}}
    assert shown["operator_key"] == "<set>"
