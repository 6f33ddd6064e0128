"""TLS on the control connection, in-process: TLS 1.3 only, verification always on, mutual
TLS identities, and handshakes that never hold up anyone else's accept.

Contexts come from ``ferrotunnel.plugins.tls`` (what the CLI uses) with trustme certificates.
Runs on asyncio (native ``start_tls``), uvloop and trio (anyio TLS streams).
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

import anyio
import pytest
import trustme

from ferrotunnel.core import (
    ConfigError,
    HandshakeError,
    RejectedError,
    Server,
    SessionConfig,
    TlsError,
)
from ferrotunnel.core.plugin import Identity, Peer, PluginHost, hookimpl
from ferrotunnel.plugins.tls import client_context, server_context
from ferrotunnel.protocol import ALPN_PROTOCOL, Hello

from .helpers import (
    background,
    connect,
    echo_server,
    free_port_range,
    make_client,
    make_server,
    read_until_error,
    roundtrip,
    tls_client_hello,
    wait_for,
)

pytestmark = pytest.mark.anyio


class Pki:
    """A CA with a server certificate for 127.0.0.1 and a client certificate, as files."""

    def __init__(self, directory: Path, ca: trustme.CA | None = None) -> None:
        self.ca = ca or trustme.CA()
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_pem = self._write("ca.pem", self.ca.cert_pem.bytes())
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.server_pem = self._write("server.pem", server.cert_chain_pems[0].bytes())
        self.server_key = self._write("server-key.pem", server.private_key_pem.bytes())
        client = self.ca.issue_cert("alice@example.com", common_name="alice")
        self.client_pem = self._write("client.pem", client.cert_chain_pems[0].bytes())
        self.client_key = self._write("client-key.pem", client.private_key_pem.bytes())

    def _write(self, name: str, data: bytes) -> str:
        path = self.dir / name
        path.write_bytes(data)
        return str(path)

    def server(self, *, client_auth: bool = False) -> ssl.SSLContext:
        ca = self.ca_pem if client_auth else None
        return server_context(self.server_pem, self.server_key, ca=ca, client_auth=client_auth)

    def client(self, *, cert: bool = False) -> ssl.SSLContext:
        if cert:
            return client_context(ca=self.ca_pem, cert=self.client_pem, key=self.client_key)
        return client_context(ca=self.ca_pem)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


class Identities:
    """Records the identity of every session the server opens."""

    def __init__(self) -> None:
        self.seen: list[Identity] = []

    @hookimpl
    def ferrotunnel_session_opened(self, identity: Identity) -> None:
        self.seen.append(identity)


async def test_tls_tunnel_carries_data_with_tls13_and_alpn(pki: Pki) -> None:
    payload = os.urandom(512 * 1024)
    async with (
        echo_server() as echo_port,
        make_server(ssl_context=pki.server()) as server,
        make_client(server, echo_port, ssl_context=pki.client()) as client,
    ):
        session = client.session
        assert session is not None
        assert session.tls is not None
        assert (session.tls.version, session.tls.alpn) == ("TLSv1.3", ALPN_PROTOCOL)
        [server_session] = server.sessions
        assert server_session.tls is not None
        assert server_session.tls.version == "TLSv1.3"
        assert server_session.tls.peer_subject is None  # no client certificate asked for
        port = client.tunnels[0].remote_port
        assert port is not None
        with anyio.fail_after(10):
            assert await roundtrip(port, payload) == payload


async def test_client_without_the_ca_fails_with_a_verification_error(pki: Pki) -> None:
    """System roots do not know a private CA: a clear, final error — never a silent
    fallback to an unverified connection, and no retry loop."""
    async with make_server(ssl_context=pki.server()) as server:
        client = make_client(server, 1, ssl_context=client_context(), reconnect=True)
        with anyio.fail_after(10), pytest.raises(TlsError, match="cannot verify the server"):
            await client.start()


async def test_wrong_server_name_fails_verification(pki: Pki) -> None:
    async with make_server(ssl_context=pki.server()) as server:
        client = make_client(
            server, 1, ssl_context=pki.client(), server_hostname="tunnel.example.com"
        )
        with anyio.fail_after(10), pytest.raises(TlsError, match=r"tunnel\.example\.com") as info:
            await client.start()
    # the CA is trusted: the hint is about the name, not --tls-ca
    assert "--tls-server-name" in str(info.value)
    assert "--tls-ca" not in str(info.value)


async def test_a_tls12_only_client_is_refused(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ferrotunnel")
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    old.load_verify_locations(pki.ca_pem)
    async with echo_server() as echo_port, make_server(ssl_context=pki.server()) as server:
        port = server.control_address.port
        with (
            anyio.fail_after(10),
            pytest.raises((ssl.SSLError, OSError, anyio.BrokenResourceError)),
        ):
            await anyio.connect_tcp("127.0.0.1", port, ssl_context=old, tls_hostname="127.0.0.1")
        # the server noted it and goes on serving
        async with make_client(server, echo_port, ssl_context=pki.client()) as good:
            assert good.tunnels
    assert any(
        "TLS handshake from" in r.getMessage() and "protocol" in r.getMessage()
        for r in caplog.records
    )


async def test_mutual_tls_identity_is_the_certificate_common_name(pki: Pki) -> None:
    """With client certificates required, no token is needed: the certificate is the
    credential, and its CN is the session's identity."""
    identities = Identities()
    plugins = PluginHost.with_plugins([identities])
    server = Server(
        bind="127.0.0.1:0",
        tcp_bind="127.0.0.1:0",
        ssl_context=pki.server(client_auth=True),
        plugins=plugins,
        session=SessionConfig(handshake_timeout=5),
    )
    async with echo_server() as echo_port, server:
        client = make_client(server, echo_port, token=None, ssl_context=pki.client(cert=True))
        async with client:
            assert identities.seen == [Identity("cert:alice")]
            [session] = server.sessions
            assert session.tls is not None
            assert session.tls.peer_subject is not None
            assert session.tls.peer_subject.startswith("CN=alice,")  # trustme adds O and OU


async def test_with_a_token_configured_a_certificate_alone_is_not_enough(pki: Pki) -> None:
    """Client certificates and a token: the client needs both (the certificate is only
    verified, it names no credential)."""
    identities = Identities()
    async with (
        echo_server() as echo_port,
        make_server(
            ssl_context=pki.server(client_auth=True), plugins=PluginHost.with_plugins([identities])
        ) as server,
    ):
        alone = make_client(server, echo_port, token=None, ssl_context=pki.client(cert=True))
        with anyio.fail_after(10), pytest.raises(RejectedError, match="also requires a token"):
            await alone.start()
        both = make_client(server, echo_port, ssl_context=pki.client(cert=True))
        async with both:
            assert identities.seen == [Identity("token")]


class ListedSubjects:
    """An authenticator that knows certificates by subject, like the ``auth`` plugin's
    ``subject`` entries."""

    def __init__(self, *common_names: str) -> None:
        self.common_names = common_names

    async def authenticate(self, hello: Hello, peer: Peer) -> Identity | None:
        tls = peer.tls
        if tls is not None and tls.peer_common_name in self.common_names:
            return Identity(f"listed:{tls.peer_common_name}")
        return None


async def test_with_authenticators_an_unlisted_certificate_is_refused(pki: Pki) -> None:
    """An authenticator that scopes some certificates would be pointless if an unlisted one
    got the unscoped ``cert:CN`` identity."""
    for listed, expected in [(("alice",), Identity("listed:alice")), (("bob",), None)]:
        identities = Identities()
        server = Server(
            bind="127.0.0.1:0",
            tcp_bind="127.0.0.1:0",
            ssl_context=pki.server(client_auth=True),
            authenticators=[ListedSubjects(*listed)],
            plugins=PluginHost.with_plugins([identities]),
            session=SessionConfig(handshake_timeout=5),
        )
        async with echo_server() as echo_port, server:
            client = make_client(server, echo_port, token=None, ssl_context=pki.client(cert=True))
            if expected is None:
                with anyio.fail_after(10), pytest.raises(RejectedError, match="requires a token"):
                    await client.start()
            else:
                async with client:
                    pass
            assert identities.seen == ([expected] if expected else [])


async def test_mutual_tls_refuses_a_client_without_a_certificate(pki: Pki) -> None:
    async with make_server(ssl_context=pki.server(client_auth=True)) as server:
        client = make_client(server, 1, ssl_context=pki.client())
        with anyio.fail_after(10), pytest.raises(TlsError, match="requires a client certificate"):
            await client.start()
        assert server.sessions == []


async def test_mutual_tls_refuses_a_certificate_from_another_ca(pki: Pki, tmp_path: Path) -> None:
    stranger = Pki(tmp_path / "other")
    context = client_context(ca=pki.ca_pem, cert=stranger.client_pem, key=stranger.client_key)
    async with make_server(ssl_context=pki.server(client_auth=True)) as server:
        client = make_client(server, 1, ssl_context=context)
        with anyio.fail_after(10), pytest.raises(TlsError, match="does not accept"):
            await client.start()
        assert server.sessions == []


async def test_plain_client_against_a_tls_server_fails_without_harm(pki: Pki) -> None:
    async with echo_server() as echo_port, make_server(ssl_context=pki.server()) as server:
        plain = make_client(server, echo_port, reconnect=False)
        with anyio.fail_after(10), pytest.raises(HandshakeError):
            await plain.start()
        async with make_client(server, echo_port, ssl_context=pki.client()) as good:
            assert good.tunnels


async def test_silent_and_stalled_handshakes_do_not_delay_a_good_client(pki: Pki) -> None:
    """Connections that never speak, and ones that stop in the middle of the TLS handshake,
    sit in their own tasks until the deadline: a good client connects meanwhile."""
    hello_start = tls_client_hello()[:40]
    config = SessionConfig(handshake_timeout=30)
    async with echo_server() as echo_port, make_server(config, ssl_context=pki.server()) as server:
        port = server.control_address.port
        stalled = [await connect(port) for _ in range(5)]
        for sock in stalled[:3]:
            await sock.send(hello_start)  # part of a ClientHello, then silence
        try:
            with anyio.fail_after(5):  # far below the 30 s handshake deadline
                async with make_client(server, echo_port, ssl_context=pki.client()) as good:
                    remote = good.tunnels[0].remote_port
                    assert remote is not None
                    assert await roundtrip(remote, b"through") == b"through"
        finally:
            for sock in stalled:
                await sock.aclose()


async def test_a_stalled_tls_handshake_is_closed_at_the_deadline(pki: Pki) -> None:
    config = SessionConfig(handshake_timeout=0.5)
    async with make_server(config, ssl_context=pki.server()) as server:
        async with await connect(server.control_address.port) as sock:
            await sock.send(tls_client_hello()[:40])
            with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await read_until_error(sock)
        await wait_for(lambda: server._unauthenticated == 0)


async def test_server_without_any_credential_check_is_a_config_error(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="token is required"):
        Server(bind="127.0.0.1:0", ssl_context=pki.server())  # TLS alone proves nothing


async def test_shutdown_cancels_handshakes_in_progress(pki: Pki) -> None:
    config = SessionConfig(handshake_timeout=30)
    async with background(make_server(config, ssl_context=pki.server())) as running:
        server = running.value
        async with await connect(server.control_address.port) as sock:
            await sock.send(tls_client_hello()[:40])
            await wait_for(lambda: server._unauthenticated == 1)
            with anyio.fail_after(5):
                await running.stop()
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await sock.receive()


def test_server_context_never_enables_client_auth_silently(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="--tls-client-auth"):
        server_context(pki.server_pem, pki.server_key, ca=pki.ca_pem)
    with pytest.raises(ConfigError, match="needs --tls-ca"):
        server_context(pki.server_pem, pki.server_key, client_auth=True)
    context = pki.server()
    assert context.minimum_version is ssl.TLSVersion.TLSv1_3
    assert context.verify_mode is ssl.CERT_NONE


def test_client_context_verifies_unless_told_not_to(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    assert client_context().verify_mode is ssl.CERT_REQUIRED
    assert client_context().check_hostname
    assert client_context(ca=pki.ca_pem).minimum_version is ssl.TLSVersion.TLSv1_3
    caplog.set_level(logging.WARNING)
    insecure = client_context(skip_verify=True)
    assert insecure.verify_mode is ssl.CERT_NONE
    assert any("verification is OFF" in r.getMessage() for r in caplog.records)


def test_unreadable_key_material_is_a_config_error_without_its_contents(
    pki: Pki, tmp_path: Path
) -> None:
    bad_key = tmp_path / "bad-key.pem"
    bad_key.write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n")
    with pytest.raises(ConfigError) as caught:
        server_context(pki.server_pem, str(bad_key))
    assert "c2VjcmV0" not in str(caught.value)
    assert "--tls-key" in str(caught.value)
    with pytest.raises(ConfigError, match="no such file"):
        client_context(ca=str(tmp_path / "missing.pem"))


async def test_many_clients_handshake_at_once(pki: Pki) -> None:
    """Twenty clients connecting together (ClientHellos arriving with the accepts, HELLOs
    right behind the handshakes) all get their sessions: no byte is lost between the loop's
    first read and the TLS protocol taking over."""
    async with (
        echo_server() as echo_port,
        make_server(
            ssl_context=pki.server(), tcp_bind=None, tcp_port_range=free_port_range(20)
        ) as server,
    ):
        connected, done = [], anyio.Event()

        async def one(i: int) -> None:
            client = make_client(server, echo_port, ssl_context=pki.client(), tunnel_id=f"t{i}")
            async with client:
                connected.append(client)
                await done.wait()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(one, i)
                await wait_for(lambda: len(connected) == 20, seconds=15)
                assert len(server.sessions) == 20
                done.set()
