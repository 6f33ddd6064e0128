"""What a plugin author meets when declaring and overriding a configuration table."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ferrotunnel.core import ConfigError
from ferrotunnel.core.plugin import ConfigSchema, from_mapping


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


def _schema() -> ConfigSchema:
    schema = ConfigSchema()
    schema.add_table("mine", MySettings, owner="tests")
    return schema
