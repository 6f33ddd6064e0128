"""What a plugin author meets when declaring and overriding a configuration table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ferrotunnel.core import ConfigError
from ferrotunnel.core.plugin import ConfigSchema, from_mapping, load_plugins, load_toml


@dataclass(frozen=True)
class MySettings:
    greeting: str = "world"
    port: int = 8000
    names: tuple[str, ...] = ()


def test_replace_converts_like_the_file() -> None:
    """What a ``TABLE__KEY`` option sets: click's tuple (``multiple=True``) becomes the
    table's type, as a TOML list would."""
    config = from_mapping(_schema(), {})
    config.replace("mine", greeting="hello", port=9000, names=("a", "b"))
    assert config.get(MySettings) == MySettings("hello", 9000, ("a", "b"))


def test_replace_with_a_typo_in_the_key_names_the_closest_one() -> None:
    config = from_mapping(_schema(), {})
    with pytest.raises(ConfigError, match=r"'greting' of \[mine\]: no such key; did you mean 'gr"):
        config.replace("mine", greting="hello")


def test_replace_of_an_unknown_table_names_the_closest_one() -> None:
    config = from_mapping(_schema(), {})
    with pytest.raises(ConfigError, match=r"unknown table \[mien\]; did you mean 'mine'"):
        config.replace("mien", greeting="hello")


def test_replace_with_a_wrong_type_names_the_expected_one() -> None:
    """An ``int`` key set by an option declared without ``type=int`` (click gives a str)."""
    config = from_mapping(_schema(), {})
    with pytest.raises(ConfigError, match=r"mine.port must be an integer, not '9000'"):
        config.replace("mine", port="9000")


def test_source_of_names_the_file_line_the_replacing_option_or_the_default(
    tmp_path: Path,
) -> None:
    path = tmp_path / "my.toml"
    path.write_text('[mine]\ngreeting = "hi"\nport = 1\n')
    config = load_toml(_schema(), path)
    assert config.source_of("mine", "greeting", "--greeting") == f"{path}:2: [mine] greeting"
    assert config.source_of("mine", "names", "--names") == "--names"  # a default
    config.replace("mine", greeting="hello", port=2)
    config.note_source("mine", "greeting", "MINE_GREETING")
    assert config.source_of("mine", "greeting", "--greeting") == "MINE_GREETING"
    # replaced by a library's call: not the file's line any more, so the caller's default
    assert config.source_of("mine", "port", "--port") == "--port"


def _schema() -> ConfigSchema:
    schema = ConfigSchema()
    schema.add_table("mine", MySettings, owner="tests")
    return schema


@dataclass(frozen=True)
class WithAPath:
    greeting: str = "world"
    log: Path = Path("access.log")


def test_an_unsupported_field_type_is_refused_when_the_table_is_declared() -> None:
    """Not later, as a traceback, when a user first sets that key in a file."""
    schema = ConfigSchema()
    with pytest.raises(TypeError, match=r"unsupported setting type .*Path.* for mine\.log"):
        schema.add_table("mine", WithAPath, owner="tests")


@dataclass(frozen=True)
class Inner:
    rate: float = 1.0


@dataclass(frozen=True)
class Everything:
    text: str = ""
    count: int = 0
    ratio: float = 0.0
    on: bool = False
    maybe: int | None = None
    items: list[str] = field(default_factory=list)
    ranges: tuple[tuple[int, int], ...] = ()
    extra: dict[str, int] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)
    anything: Any = None


def test_every_documented_field_type_is_accepted() -> None:
    schema = ConfigSchema()
    schema.add_table("everything", Everything, owner="tests")
    config = from_mapping(schema, {"everything": {"ranges": [[1, 2]], "inner": {"rate": 2}}})
    assert config.get(Everything).ranges == ((1, 2),)
    assert config.get(Everything).inner == Inner(2.0)


def test_the_table_of_a_blocked_plugin_says_it_is_blocked(tmp_path: Path) -> None:
    """Not just "unknown table [rate_limit]" with a list that lacks it."""
    path = tmp_path / "server.toml"
    path.write_text("[headers]\n\n[rate_limit]\nrate = 5.0\n")
    host = load_plugins(block=["rate-limit"])
    with pytest.raises(ConfigError) as caught:
        load_toml(host.schema(), path)
    assert str(caught.value) == (
        f"{path}:3: unknown table [rate_limit]: plugin 'rate-limit' (ferrotunnel-plugins "
        "0.1.0) is blocked (--block-plugin, FERROTUNNEL_BLOCK_PLUGINS), so its table is unknown "
        "(comment it out, or load the plugin)"
    )


def test_a_tables_sides_are_server_and_or_client() -> None:
    schema = ConfigSchema()
    schema.add_table("mine", MySettings, owner="me", sides=("server",))
    assert schema.tables["mine"].sides == frozenset({"server"})
    schema.add_table("both", MySettings, owner="me")
    assert schema.tables["both"].sides == frozenset({"server", "client"})
    for bad in ((), ("visitor",)):
        with pytest.raises(TypeError, match=r"sides of table \[bad\]"):
            schema.add_table("bad", MySettings, owner="me", sides=bad)
