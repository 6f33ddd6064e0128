"""The hooks a ferrotunnel plugin can implement.

A plugin is a module or object with functions named after these hooks and marked with
:data:`hookimpl`; it takes only the arguments it names. Hooks run at start-up and on session
events — never per request, frame or chunk. Behaviour on the request path comes from the
objects the ``*_middlewares`` and ``authenticators`` hooks return.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any

import pluggy

from ferrotunnel.protocol import GrantedTunnel, Hello

from .config import Config, ConfigSchema
from .types import (
    Authenticator,
    ExchangeRecord,
    HttpMiddleware,
    Identity,
    StreamObserver,
    TcpMiddleware,
    TlsOptions,
)

if TYPE_CHECKING:
    from ..session import Session

PROJECT = "ferrotunnel"

hookspec = pluggy.HookspecMarker(PROJECT)
#: mark a plugin's hook implementations: ``@hookimpl def ferrotunnel_...``
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------- start-up


@hookspec(historic=True)
def ferrotunnel_add_config(schema: ConfigSchema) -> None:
    """Declare the plugin's configuration table: its keys, types and defaults.

    Unknown keys in that table are an error for the user, naming the closest valid key.

    Example::

        @dataclass(frozen=True)
        class HelloSettings:
            greeting: str = "hello"

        @hookimpl
        def ferrotunnel_add_config(schema):
            schema.add_table("hello", HelloSettings, owner="ferrotunnel-hello")
    """


@hookspec(historic=True)
def ferrotunnel_configure(config: Config) -> None:
    """Read the validated configuration (after every table was declared and loaded).

    Example::

        @hookimpl
        def ferrotunnel_configure(config):
            global SETTINGS
            SETTINGS = config.table("hello")
    """


@hookspec
def ferrotunnel_register_commands(cli: Any) -> None:
    """Add subcommands to the ``ferrotunnel`` command (``cli`` is its ``click.Group``).

    Example::

        @hookimpl
        def ferrotunnel_register_commands(cli):
            @cli.command()
            def hello():
                click.echo("hello")
    """


@hookspec(firstresult=True)
def ferrotunnel_ssl_context(options: TlsOptions) -> ssl.SSLContext | None:
    """Build the SSL context for ``options.purpose`` (control plane server or client, HTTPS
    ingress) from the user's TLS settings; the first plugin to return one wins.

    The ``tls`` plugin of ``ferrotunnel-plugins`` implements it (TLS 1.3 only, verification
    always on, ALPN ``ferrotunnel/1``); a plugin could instead fetch certificates from a vault
    or an ACME CA.

    Example::

        @hookimpl(tryfirst=True)
        def ferrotunnel_ssl_context(options):
            if options.purpose is TlsPurpose.INGRESS:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                context.load_cert_chain(*vault.fetch("ingress"))
                return context
            return None  # let the tls plugin handle the control plane
    """


# ---------------------------------------------------------------------------- request path


@hookspec
def ferrotunnel_authenticators(config: Config) -> Iterable[Authenticator]:
    """Objects deciding who a connecting client is (see :class:`Authenticator`).

    They are tried in order; the first to return an :class:`Identity` wins.

    Example::

        class AllowListed:
            async def authenticate(self, hello, peer):
                return Identity("office") if peer.host == "10.0.0.5" else None

        @hookimpl
        def ferrotunnel_authenticators(config):
            return [AllowListed()]
    """
    return ()


@hookspec
def ferrotunnel_http_middlewares(config: Config) -> Iterable[HttpMiddleware]:
    """Objects on the HTTP ingress's request path (see :class:`HttpMiddleware`).

    Example::

        class PoweredBy:
            def on_response(self, response, ctx):
                response.set_header("X-Powered-By", "ferrotunnel")

        @hookimpl
        def ferrotunnel_http_middlewares(config):
            return [PoweredBy()]
    """
    return ()


@hookspec
def ferrotunnel_tcp_middlewares(config: Config) -> Iterable[TcpMiddleware]:
    """Objects deciding whether a visitor may connect to a TCP tunnel.

    Example::

        class NoLoopback:
            def on_connect(self, conn):
                return not conn.visitor_ip.startswith("127.")

        @hookimpl
        def ferrotunnel_tcp_middlewares(config):
            return [NoLoopback()]
    """
    return ()


@hookspec
def ferrotunnel_stream_observers(config: Config) -> Iterable[StreamObserver]:
    """Objects the client shows each stream the server opens to it (see
    :class:`StreamObserver`), before relaying it; ``on_stream`` may return a
    :class:`StreamTap` to see the stream's bytes, or None.

    Example::

        class CountStreams:
            def __init__(self):
                self.seen = 0

            def on_stream(self, stream):
                self.seen += 1
                return None  # no tap: the bytes are not needed

        @hookimpl
        def ferrotunnel_stream_observers(config):
            return [CountStreams()]
    """
    return ()


# ---------------------------------------------------------------------------- lifecycle


@hookspec
def ferrotunnel_startup(app: Any) -> Awaitable[None] | None:
    """The server or client (``app``) has started; return an awaitable to do async work.

    Example::

        @hookimpl
        async def ferrotunnel_startup(app):
            await open_my_database()
    """


@hookspec
def ferrotunnel_shutdown(app: Any) -> Awaitable[None] | None:
    """The server or client is stopping; awaited like :func:`ferrotunnel_startup`.

    Example::

        @hookimpl
        async def ferrotunnel_shutdown(app):
            await close_my_database()
    """


# ---------------------------------------------------------------------------- events (cheap)


@hookspec
def ferrotunnel_session_opened(session: Session, identity: Identity) -> None:
    """A client session was accepted. Keep it cheap: this runs on the event loop.

    Example::

        @hookimpl
        def ferrotunnel_session_opened(session, identity):
            SESSIONS.labels(identity.name).inc()
    """


@hookspec
def ferrotunnel_handshake_done(
    session: Session, hello: Hello | None, failure: str | None, duration: float
) -> None:
    """A session handshake ended, on the server or the client (``session.role``).

    ``failure`` is None when the session was accepted, else why not: a reject code
    (``auth_failed``, ``server_busy``...), ``timeout`` or ``closed``. ``hello`` is the HELLO
    (None if none arrived); ``duration`` the seconds since the connection was made.

    Example::

        @hookimpl
        def ferrotunnel_handshake_done(session, hello, failure, duration):
            if failure is not None:
                FAILURES.labels(failure).inc()
    """


@hookspec
def ferrotunnel_session_closed(session: Session) -> None:
    """A client session ended (for any reason).

    Example::

        @hookimpl
        def ferrotunnel_session_closed(session):
            log.info("session %s closed", session.session_id)
    """


@hookspec
def ferrotunnel_tunnel_registered(session: Session, tunnel: GrantedTunnel) -> None:
    """A tunnel became reachable at ``tunnel.public_url`` (on a client with plugins: each time
    its session is up).

    Example::

        @hookimpl
        def ferrotunnel_tunnel_registered(session, tunnel):
            print("up:", tunnel.public_url)
    """


@hookspec
def ferrotunnel_tunnel_closed(session: Session, tunnel: GrantedTunnel) -> None:
    """A tunnel is no longer reachable (its session ended; on a client, ``client.status`` says
    whether it is reconnecting).

    Example::

        @hookimpl
        def ferrotunnel_tunnel_closed(session, tunnel):
            print("down:", tunnel.public_url)
    """


@hookspec
def ferrotunnel_exchange_complete(record: ExchangeRecord) -> None:
    """An HTTP exchange finished (status, sizes, duration). Runs once per request: keep it
    cheap, or collect records in a middleware's ``on_complete`` instead.

    Example::

        @hookimpl
        def ferrotunnel_exchange_complete(record):
            LATENCY.observe(record.duration)
    """
