"""Configuration tables declared by their owners, validated from TOML.

Every table of a configuration file is declared — by the kernel or by a plugin's
``ferrotunnel_add_config`` hook — as a dataclass whose fields are the table's keys, with their
types and defaults. Loading converts each table into an instance of its dataclass and refuses
anything else: an unknown table or key is an error naming it, the file and line, and the
closest valid name; a wrong type names the expected one.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConfigError

__all__ = ["Config", "ConfigSchema", "TableSpec", "from_mapping", "load_toml"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TableSpec:
    name: str
    settings: type
    owner: str
    help: str = ""
    #: example values (as TOML data) that ``ferrotunnel config init`` shows, commented out
    example: Mapping[str, object] | None = None
    #: who reads the table: "server", "client" or both (a client's file refuses a table only
    #: a server reads, which it would otherwise ignore, and its starter file leaves it out)
    sides: frozenset[str] = frozenset({"server", "client"})


class ConfigSchema:
    """The tables a configuration may contain. Plugins add theirs in ``ferrotunnel_add_config``."""

    def __init__(self) -> None:
        self.tables: dict[str, TableSpec] = {}
        #: plugins found but not loaded (blocked, failed...) -> why, so that the table of one
        #: (named like it: ``access_log`` for ``access-log``) is not just "unknown"
        self.absent: dict[str, str] = {}

    def add_table(
        self,
        name: str,
        settings: type,
        *,
        owner: str,
        help: str = "",
        example: Mapping[str, object] | None = None,
        sides: Iterable[str] = ("server", "client"),
    ) -> None:
        """Declare ``[name]``, whose keys are the fields of the dataclass ``settings``.

        ``example`` gives values, as TOML data, that the starter file of ``ferrotunnel config
        init`` shows commented out instead of a key's default: for keys without one (``None``),
        empty tables of entries (``{"tunnels": {"*": {"allow": ["10.0.0.0/8"]}}}``), or a
        setting another one needs. It must be valid: it is checked here.

        ``sides`` says who reads the table: ``("server",)`` for one that only a server uses
        (HTTP middlewares, authenticators), so that a client's file refuses it rather than
        ignoring it (basic auth set there would protect nothing).
        """
        side_set = frozenset(sides)
        if not side_set or not side_set <= {"server", "client"}:
            raise TypeError(f"sides of table [{name}] must be 'server' and/or 'client'")
        if not dataclasses.is_dataclass(settings):
            raise TypeError(f"settings of table [{name}] must be a dataclass")
        _check_types(settings, name)  # the plugin's mistake, found before a user sets the key
        if name in self.tables:
            other = self.tables[name].owner
            raise ConfigError(f"table [{name}] is declared twice (by {other} and {owner})")
        if example is not None:  # refused now, not in a user's file
            _to_dataclass(settings, dict(example), name, _Locator(f"example of [{name}]", ""), name)
        self.tables[name] = TableSpec(name, settings, owner, help, example, side_set)


class Config:
    """Validated settings: one dataclass instance per declared table."""

    def __init__(
        self,
        schema: ConfigSchema,
        values: Mapping[str, object],
        source: str,
        raw: Mapping[str, object] | None = None,
        text: str = "",
    ) -> None:
        self.schema = schema
        self.source = source
        self._values = dict(values)
        #: the tables as written in the file (to tell a key set there from a default)
        self.raw: Mapping[str, object] = raw or {}
        self._locate = _Locator(source, text)
        #: (table, key) -> the flag or variable that replaced the file's value ("": unknown)
        self._replaced: dict[tuple[str, str], str] = {}

    def where(self, table: str, key: str | None = None, *, entry: int = 0) -> str:
        """``FILE:LINE`` of ``[table]`` (or of its ``key``), for messages; ``FILE`` alone
        when the line is unknown. ``entry``: which ``[[table]]`` of an array of tables."""
        written = None if key is None else self._written(table, key, entry)
        return self._locate.where(table, written, entry)

    def _written(self, table: str, key: str, entry: int = 0) -> str:
        """``key`` as the file writes it in ``[table]``: as given, or with dashes."""
        section: object = self.raw
        for part in table.split("."):  # [client.tunnels] is raw["client"]["tunnels"]
            section = section.get(part) if isinstance(section, dict) else None
        if isinstance(section, list):
            section = section[entry] if entry < len(section) else None
        return key if isinstance(section, dict) and key in section else key.replace("_", "-")

    def path(self, value: str) -> Path:
        """A file a setting names: ``~`` expanded, a relative path taken from the
        configuration file's folder (so that a start from another working directory, a
        service's, finds the same file; unchanged when the configuration is not a file)."""
        resolved = Path(value).expanduser()
        source = Path(self.source)
        if not resolved.is_absolute() and source.is_file():
            return source.parent / resolved
        return resolved

    def given(self, table: str, key: str) -> bool:
        """Whether the file set ``key`` of ``[table]``."""
        section = self.raw.get(table)
        return isinstance(section, dict) and (key in section or key.replace("_", "-") in section)

    def source_of(self, table: str, key: str, default: str) -> str:
        """Where ``[table] key`` got its value, as an error about it should name it: the flag
        or variable that replaced it (see :meth:`note_source`), ``FILE:LINE: [table] key``
        from the file, else ``default`` (say, the option a user would give)."""
        replaced = self._replaced.get((table, key))
        if replaced is None and self.given(table, key):
            return self.file_source(table, key)
        return replaced or default

    def file_source(self, table: str, key: str) -> str:
        """``FILE:LINE: [table] key``, the key as the file writes it (``-`` or ``_``)."""
        return f"{self.where(table, key)}: [{table}] {self._written(table, key)}"

    def note_source(self, table: str, key: str, source: str) -> None:
        """Record which flag or variable set a key :meth:`replace` changed."""
        self._replaced[(table, key)] = source

    def table(self, name: str) -> Any:
        return self._values[name]

    def get(self, settings: type[T]) -> T:
        """The instance of ``settings`` (a declared table's dataclass)."""
        for value in self._values.values():
            if type(value) is settings:
                return value
        raise KeyError(f"no table declared with {settings.__name__}")

    def replace(self, name: str, /, **changes: object) -> None:
        """Override keys of one table (command-line flags win over the file).

        The values are checked like the file's: an unknown table or key (a plugin's
        ``TABLE__KEY`` option with a typo) or a wrong type (an ``int`` key set from an option
        without ``type=int``) is a :class:`ConfigError`, not a traceback at start-up.
        """
        if not changes:
            return
        if name not in self._values:
            known = sorted(self._values)
            raise ConfigError(
                f"cannot set {', '.join(changes)} of unknown table [{name}]"
                f"{_closest(name, known)} (known: {', '.join(known)})"
            )
        current: Any = self._values[name]
        fields = [f.name for f in dataclasses.fields(current) if f.init]
        hints = typing.get_type_hints(type(current))
        locate = _Locator("command line", "")
        converted: dict[str, object] = {}
        for key, value in changes.items():
            if key not in fields:
                raise ConfigError(
                    f"cannot set {key!r} of [{name}]: no such key{_closest(key, fields)}"
                )
            if isinstance(value, tuple):  # click's multiple=True; TOML gives lists
                value = list(value)
            converted[key] = _convert(value, hints[key], f"{name}.{key}", locate, name, key)
        self._values[name] = dataclasses.replace(current, **converted)
        for key in converted:
            self._replaced.setdefault((name, key), "")


def load_toml(
    schema: ConfigSchema, path: str | Path | None, *, unknown_table_hint: str = ""
) -> Config:
    """Read and validate a TOML file (None: every table at its defaults).

    ``unknown_table_hint`` ends the error about a table no one declared (say, why plugins'
    tables are missing: ``"plugins are off (--no-plugins), so their tables are unknown"``).
    """
    import tomllib

    data: dict[str, object] = {}
    text = ""
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
            data = tomllib.loads(text)
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            line = exc.object[: exc.start].count(b"\n") + 1
            raise ConfigError(
                f"{path}:{line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); "
                "a TOML file must be UTF-8"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    values = _convert_tables(schema, data, _Locator(source, text), unknown_table_hint)
    return Config(schema, values, source, data, text)


def from_mapping(
    schema: ConfigSchema, data: Mapping[str, object], source: str = "<dict>"
) -> Config:
    values = _convert_tables(schema, dict(data), _Locator(source, ""))
    return Config(schema, values, source, dict(data))


class _Locator:
    """Finds the line of a table or key in the file text, for error messages."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.lines = text.splitlines()

    def where(self, table: str, key: str | None = None, entry: int = 0) -> str:
        header = re.compile(r"^\s*\[+\s*" + re.escape(table) + r"\s*[\].]")
        # a key starts a line, or follows "{" or "," in an inline table (``{ rate = 1.0 }``)
        key_re = re.compile(r"(?:^|[{,])\s*[\"']?" + re.escape(key or "") + r"[\"']?\s*=")
        in_table = False
        for number, line in enumerate(self.lines, 1):
            if header.match(line):
                if entry:  # an earlier [[table]] of an array of tables
                    entry -= 1
                    continue
                if key is None:
                    return f"{self.source}:{number}"
                in_table = True
                continue
            if in_table and key is not None and key_re.search(line):
                return f"{self.source}:{number}"
        return self.source


def _closest(name: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(name, choices, n=1)
    return f"; did you mean {match[0]!r}?" if match else ""


def _convert_tables(
    schema: ConfigSchema, data: dict[str, object], locate: _Locator, hint: str = ""
) -> dict[str, object]:
    values: dict[str, object] = {}
    for name in data:
        if name not in schema.tables:
            known = sorted(schema.tables)
            absent = schema.absent.get(name.replace("_", "-")) or schema.absent.get(name)
            if absent:
                raise ConfigError(
                    f"{locate.where(name)}: unknown table [{name}]: {absent}, so its table "
                    "is unknown (comment it out, or load the plugin)"
                )
            raise ConfigError(
                f"{locate.where(name)}: unknown table [{name}]{_closest(name, known)} "
                f"(known: {', '.join(known)})" + (f"; {hint}" if hint else "")
            )
    for name, spec in schema.tables.items():
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{locate.where(name)}: [{name}] must be a table")
        values[name] = _to_dataclass(spec.settings, raw, name, locate, name)
    return values


def _to_dataclass(cls: type, raw: dict[str, Any], path: str, locate: _Locator, table: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in fields:
            choices = [f.replace("_", "-") for f in fields] + list(fields)
            raise ConfigError(
                f"{locate.where(table, key)}: unknown key {key!r} in [{path}]"
                f"{_closest(key, choices)}"
            )
        kwargs[name] = _convert(value, hints[name], f"{path}.{key}", locate, table, key)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        missing = [f for f in fields.values() if f.name not in kwargs and _required(f)]
        if missing:
            raise ConfigError(
                f"{locate.where(table)}: [{path}] needs {missing[0].name.replace('_', '-')!r}"
            ) from None
        raise ConfigError(f"{locate.where(table)}: [{path}]: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{locate.where(table)}: [{path}]: {exc}") from None


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _check_types(settings: type, path: str) -> None:
    """Refuse a field type :func:`_convert` cannot read from TOML (raises ``TypeError``)."""
    for name, hint in typing.get_type_hints(settings).items():
        if name in {f.name for f in dataclasses.fields(settings) if f.init}:
            _check_type(hint, f"{path}.{name}")


def _check_type(hint: Any, path: str) -> None:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            if option is not type(None):
                _check_type(option, path)
    elif origin in (list, tuple) or hint in (list, tuple):
        if args:
            _check_type(args[0], f"{path}[]")
    elif origin is dict or hint is dict:
        if len(args) == 2:
            _check_type(args[1], f"{path}.*")
    elif dataclasses.is_dataclass(hint):
        _check_types(hint, path)  # type: ignore[arg-type]
    elif hint not in _TYPE_NAMES and hint is not Any:
        raise TypeError(
            f"unsupported setting type {hint!r} for {path}: use str, int, float, bool, "
            "an optional, list[...], tuple[...], dict[str, ...] or a nested dataclass "
            "(convert in __post_init__ for anything else)"
        )


def _convert(value: Any, hint: Any, path: str, locate: _Locator, table: str, key: str) -> Any:
    where = locate.where(table, key)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is None and len(options) < len(args):
            return None
        errors = []
        for option in options:
            try:
                return _convert(value, option, path, locate, table, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if hint in _TYPE_NAMES:
        ok = isinstance(value, hint) and not (hint is not bool and isinstance(value, bool))
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            raise ConfigError(f"{where}: {path} must be {_TYPE_NAMES[hint]}, not {value!r}")
        return value
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {path} must be a list, not {value!r}")
        item = args[0] if args else Any
        items = [_convert(v, item, f"{path}[{i}]", locate, table, key) for i, v in enumerate(value)]
        return tuple(items) if (origin or hint) is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {path} must be a table, not {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {k: _convert(v, item, f"{path}.{k}", locate, table, k) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {path} must be a table, not {value!r}")
        return _to_dataclass(hint, value, path, locate, table)  # type: ignore[arg-type]
    if hint is Any:
        return value
    raise TypeError(f"unsupported setting type {hint!r} for {path}")
