"""ferrotunnel's plugin kernel: hookspecs, the plugin host, configuration tables.

Writing a plugin (see ``docs/plugin-development.md``)::

    # ferrotunnel_hello/__init__.py
    from ferrotunnel.core.plugin import hookimpl

    class Hello:
        def on_response(self, response, ctx):
            response.set_header("X-Hello", "world")

    @hookimpl
    def ferrotunnel_http_middlewares(config):
        return [Hello()]

    # pyproject.toml
    [project.entry-points.ferrotunnel]
    hello = "ferrotunnel_hello"
"""

from .config import Config, ConfigSchema, TableSpec, from_mapping, load_toml
from .manager import PluginError, PluginHost, PluginInfo, load_plugins
from .spec import hookimpl
from .types import (
    REPLIED_BY,
    Authenticator,
    ExchangeRecord,
    HttpMiddleware,
    HttpRequest,
    HttpResponse,
    Identity,
    Peer,
    Reply,
    RequestContext,
    StreamObserver,
    StreamTap,
    TcpConnection,
    TcpMiddleware,
    TlsOptions,
    TlsPurpose,
)

__all__ = [
    "REPLIED_BY",
    "Authenticator",
    "Config",
    "ConfigSchema",
    "ExchangeRecord",
    "HttpMiddleware",
    "HttpRequest",
    "HttpResponse",
    "Identity",
    "Peer",
    "PluginError",
    "PluginHost",
    "PluginInfo",
    "Reply",
    "RequestContext",
    "StreamObserver",
    "StreamTap",
    "TableSpec",
    "TcpConnection",
    "TcpMiddleware",
    "TlsOptions",
    "TlsPurpose",
    "from_mapping",
    "hookimpl",
    "load_plugins",
    "load_toml",
]
