"""Finding, loading and calling plugins.

Theory of operation
-------------------
:func:`load_plugins` is the one place plugins come from. It builds a pluggy manager with the
hookspecs of :mod:`.spec`, then walks the ``ferrotunnel`` entry-point group itself (rather than
pluggy's ``load_setuptools_entrypoints``) so that it can report what pluggy would hide: a
plugin that fails to import and two distributions claiming the same plugin name are logged
with the distribution and version, and skipped — or, with ``strict``, fatal. Blocked names
are recorded but never imported. Built-in plugins are found the same way (the
``ferrotunnel-plugins`` distribution declares entry points like any third party).

:class:`PluginHost` is the typed facade the kernel calls. The request path never goes
through it: at start-up the kernel asks it once for authenticators and middlewares and keeps
the objects; per-exchange notifications are only dispatched if some plugin listens.
"""

from __future__ import annotations

import inspect
import logging
import ssl
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from ..errors import ConfigError
from . import spec
from .config import Config, ConfigSchema
from .types import (
    Authenticator,
    ExchangeRecord,
    HttpMiddleware,
    StreamObserver,
    TcpMiddleware,
    TlsOptions,
)

__all__ = ["PluginHost", "PluginInfo", "load_plugins"]

log = logging.getLogger("ferrotunnel.core.plugin")

ENTRY_POINT_GROUP = "ferrotunnel"


@dataclass(slots=True)
class PluginInfo:
    """One plugin as ``ferrotunnel plugins list`` shows it."""

    name: str
    distribution: str
    version: str
    status: str  # "enabled", "blocked", "failed", "duplicate"
    hooks: list[str] = field(default_factory=list)
    error: str = ""


class PluginError(ConfigError):
    """A plugin could not be loaded and ``strict`` was asked for."""


class PluginHost:
    """The loaded plugins, and typed calls of their hooks."""

    def __init__(self, manager: pluggy.PluginManager, infos: list[PluginInfo]) -> None:
        self.manager = manager
        self.infos = infos
        self.hook = manager.hook
        self._labels: dict[int, str] = {}  # id(object a hook returned) -> its plugin's label
        #: the configuration given to :meth:`configure`
        self.config: Config | None = None

    @classmethod
    def with_plugins(
        cls, plugins: Iterable[object] = (), *, names: Sequence[str] = ()
    ) -> PluginHost:
        """A host with exactly these plugin objects (for tests and library users).

        A plugin some installed distribution declares as a ``ferrotunnel`` entry point gets
        that entry point's name, distribution and version, as :func:`load_plugins` would give
        it, so what a test sees (a record's ``replied_by``, a failure's label) is what a
        server shows; ``names`` overrides the name.
        """
        manager = _new_manager()
        infos = []
        for i, plugin in enumerate(plugins):
            ep = _entry_point_of(plugin)
            if ep is not None:
                name, dist = ep.name, ep.dist
                info = PluginInfo(name, dist.name, dist.version, "enabled") if dist else None
            else:
                name, info = getattr(plugin, "__name__", repr(plugin)), None
            if i < len(names):
                name = names[i]
            manager.register(plugin, name=name)
            info = info or PluginInfo(name, "(registered)", "", "enabled")
            info.name, info.hooks = name, _hooks_of(manager, plugin)
            infos.append(info)
        return cls(manager, infos)

    def register(self, plugin: object, name: str | None = None) -> None:
        name = self.manager.register(plugin, name=name)
        self.infos.append(
            PluginInfo(name or "?", "(registered)", "", "enabled", _hooks_of(self.manager, plugin))
        )

    # ---- start-up

    def schema(self, base: ConfigSchema | None = None) -> ConfigSchema:
        """The configuration schema: ``base`` (the kernel's tables) plus every plugin's."""
        schema = base or ConfigSchema()
        for info in self.infos:
            if info.status != "enabled":
                why = _NOT_LOADED.get(info.status, "was not loaded")
                schema.absent.setdefault(
                    info.name.replace("_", "-"),
                    f"plugin {info.name!r} ({info.distribution} {info.version}) {why}",
                )
        self.hook.ferrotunnel_add_config.call_historic(kwargs={"schema": schema})
        return schema

    def configure(self, config: Config) -> None:
        self.config = config
        self.hook.ferrotunnel_configure.call_historic(kwargs={"config": config})

    def register_commands(self, cli: Any, *, strict: bool = False) -> None:
        """Let each plugin add its commands and options to ``cli``. A plugin that raises is
        unregistered, shown as ``failed`` and logged (``strict``: a :class:`PluginError`),
        like one that fails to import: every other command, ``plugins list`` included,
        still runs."""
        infos = {info.name: info for info in self.infos}
        for impl in reversed(self.hook.ferrotunnel_register_commands.get_hookimpls()):
            try:
                impl.function(**({"cli": cli} if impl.argnames else {}))
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                info = infos.get(impl.plugin_name)
                origin = ""
                if info is not None:
                    info.status, info.error, info.hooks = "failed", error, []
                    if info.distribution != "(registered)":
                        origin = f" from {info.distribution} {info.version}"
                self.manager.unregister(name=impl.plugin_name)
                _problem(
                    strict,
                    f"plugin {impl.plugin_name!r}{origin} failed to add its commands: {error}",
                )

    def ssl_context(self, options: TlsOptions) -> ssl.SSLContext:
        """The SSL context a plugin builds for ``options``; a :class:`ConfigError` if none
        does (TLS was asked for, and silently going without it is not an option)."""
        context: ssl.SSLContext | None = self.hook.ferrotunnel_ssl_context(options=options)
        if context is None:
            raise ConfigError(
                f"TLS ({options.purpose}) was asked for but no plugin provides it: "
                "install ferrotunnel-plugins and do not block its 'tls' plugin"
            )
        return context

    def authenticators(self, config: Config) -> list[Authenticator]:
        return self._collect("ferrotunnel_authenticators", config)

    def http_middlewares(self, config: Config) -> list[HttpMiddleware]:
        return self._collect("ferrotunnel_http_middlewares", config)

    def tcp_middlewares(self, config: Config) -> list[TcpMiddleware]:
        return self._collect("ferrotunnel_tcp_middlewares", config)

    def stream_observers(self, config: Config) -> list[StreamObserver]:
        return self._collect("ferrotunnel_stream_observers", config)

    def label_of(self, obj: object) -> str:
        """``plugin (distribution version)`` for an object a plugin's hook returned."""
        return self._labels.get(id(obj), type(obj).__name__)

    def _collect(self, hook_name: str, config: Config) -> list[Any]:
        """Call one collecting hook implementation at a time, remembering who returned what
        (so a failure on the request path can name the plugin and its distribution)."""
        infos = {info.name: info for info in self.infos}
        objects: list[Any] = []
        for impl in reversed(getattr(self.hook, hook_name).get_hookimpls()):
            args = {"config": config}
            result = impl.function(**{name: args[name] for name in impl.argnames})
            info = infos.get(impl.plugin_name)
            label = impl.plugin_name
            if info is not None and info.distribution != "(registered)":
                label += f" ({info.distribution} {info.version})"
            for obj in result or ():
                self._labels[id(obj)] = label
                objects.append(obj)
        return objects

    async def startup(self, app: object) -> None:
        for result in self.hook.ferrotunnel_startup(app=app):
            if inspect.isawaitable(result):
                await result

    async def shutdown(self, app: object) -> None:
        for result in self.hook.ferrotunnel_shutdown(app=app):
            if inspect.isawaitable(result):
                await result

    # ---- events

    def listens(self, hook_name: str) -> bool:
        """Whether any plugin implements ``hook_name`` (skip building arguments if not)."""
        return bool(getattr(self.hook, hook_name).get_hookimpls())

    def exchange_complete(self, record: ExchangeRecord) -> None:
        self.hook.ferrotunnel_exchange_complete(record=record)

    def notify(self, hook_name: str, **kwargs: object) -> None:
        """Call an event hook if any plugin listens; a plugin that raises is only logged."""
        if not self.listens(hook_name):
            return
        try:
            getattr(self.hook, hook_name)(**kwargs)
        except Exception:
            log.exception("a plugin failed in %s", hook_name)


_NOT_LOADED = {
    "blocked": "is blocked (--block-plugin, FERROTUNNEL_BLOCK_PLUGINS)",
    "failed": "failed to load",
}


def _flatten(results: list[Iterable[Any] | None]) -> list[Any]:
    return [item for result in results if result for item in result]


def _new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(spec.PROJECT)
    manager.add_hookspecs(spec)
    return manager


def _entry_point_of(plugin: object) -> metadata.EntryPoint | None:
    """The ``ferrotunnel`` entry point that names ``plugin``, found without importing
    anything: only modules already imported are looked into."""
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        module_name, _, attrs = ep.value.partition(":")
        target: object = sys.modules.get(module_name.strip())
        for attr in filter(None, attrs.strip().split(".")):
            target = getattr(target, attr, None)
        if target is plugin:
            return ep
    return None


def _hooks_of(manager: pluggy.PluginManager, plugin: object) -> list[str]:
    callers = manager.get_hookcallers(plugin) or []
    return sorted(caller.name for caller in callers)


def load_plugins(
    *,
    block: Iterable[str] = (),
    enabled: bool = True,
    strict: bool = False,
    entry_points: Iterable[metadata.EntryPoint] | None = None,
) -> PluginHost:
    """Load the ``ferrotunnel`` entry points into a :class:`PluginHost`.

    ``block`` names plugins not to load; ``enabled=False`` loads none (``--no-plugins``);
    ``strict`` turns a broken or duplicate plugin into a :class:`PluginError`.
    """
    manager = _new_manager()
    blocked = set(block)
    for name in blocked:
        manager.set_blocked(name)
    infos: list[PluginInfo] = []
    if not enabled:
        return PluginHost(manager, infos)
    if entry_points is None:
        entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
    seen: dict[str, PluginInfo] = {}
    for ep in sorted(entry_points, key=lambda e: e.name):
        dist = ep.dist
        dist_name = dist.name if dist is not None else "?"
        version = dist.version if dist is not None else "?"
        info = PluginInfo(ep.name, dist_name, version, "enabled")
        infos.append(info)
        if ep.name in seen:
            first = seen[ep.name]
            info.status = "duplicate"
            info.error = f"name already used by {first.distribution} {first.version}"
            _problem(strict, f"plugin {ep.name!r} from {dist_name} {version}: {info.error}")
            continue
        seen[ep.name] = info
        if ep.name in blocked:
            info.status = "blocked"
            continue
        try:
            plugin = ep.load()
            manager.register(plugin, name=ep.name)
        except Exception as exc:
            info.status = "failed"
            info.error = f"{type(exc).__name__}: {exc}"
            _problem(
                strict,
                f"plugin {ep.name!r} from {dist_name} {version} failed to load: {info.error}",
            )
            continue
        info.hooks = _hooks_of(manager, plugin)
    return PluginHost(manager, infos)


def _problem(strict: bool, message: str) -> None:
    if strict:
        raise PluginError(message + " (--strict-plugins)")
    log.warning("%s; continuing without it", message)
