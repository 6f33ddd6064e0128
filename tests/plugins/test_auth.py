"""auth: scoped identities from [auth] tokens and tokens_file, hashed tokens, no match → None."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pytest

from ferrotunnel.core.errors import ConfigError
from ferrotunnel.core.plugin import Config, Identity, Peer, PluginHost, load_toml
from ferrotunnel.core.tls import TlsInfo
from ferrotunnel.plugins import auth
from ferrotunnel.plugins.auth import TokenAuthenticator
from ferrotunnel.protocol import Hello

from .helpers import config_of, schema_of


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def authenticator(config: Config) -> TokenAuthenticator:
    [found] = auth.ferrotunnel_authenticators(config)
    return found


def from_table(**table: Any) -> TokenAuthenticator:
    return authenticator(config_of(auth, "auth", {"auth": table}))


def test_tokens_give_scoped_identities() -> None:
    authn = from_table(
        tokens=[
            {
                "name": "alice",
                "token": "alice-token",
                "hosts": ["*.Alice.example.com."],
                "ports": [[20000, 20010], 8080],
            },
            {"name": "bob", "sha256": digest("bob-token").upper()},
            {"name": "tcp-only", "token": "t3", "hosts": []},
        ]
    )
    alice = authn.identify("alice-token")
    assert alice == Identity("alice", ("*.alice.example.com",), ((20000, 20010), (8080, 8080)))
    assert alice.may_claim_host("www.alice.example.com")
    assert not alice.may_claim_host("bob.example.com")
    assert alice.may_claim_port(20005)
    assert alice.may_claim_port(8080)
    assert not alice.may_claim_port(8081)
    assert authn.identify("bob-token") == Identity("bob")  # hashed, unscoped
    tcp_only = authn.identify("t3")
    assert tcp_only is not None
    assert not tcp_only.may_claim_host("any.example.com")


def test_a_wrong_token_is_left_to_the_next_authenticator() -> None:
    authn = from_table(tokens=[{"name": "alice", "token": "alice-token"}])
    for token in ["alice-toke", "alice-token ", "", None, digest("alice-token")]:
        assert authn.identify(token) is None


@pytest.mark.anyio
async def test_authenticate_reads_the_hello() -> None:
    authn = from_table(tokens=[{"name": "alice", "token": "alice-token"}])
    hello = Hello(versions=(1,), client_id="c1", token="alice-token")
    assert await authn.authenticate(hello, Peer("192.0.2.7", 40000)) == Identity("alice")
    anonymous = Hello(versions=(1,), client_id="c1")
    assert await authn.authenticate(anonymous, Peer("", 0)) is None


def _certificate(subject: str, common_name: str) -> Peer:
    tls = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", None, subject, common_name)
    return Peer("192.0.2.7", 40000, tls)


@pytest.mark.anyio
async def test_certificates_are_matched_by_subject_or_escaped_common_name() -> None:
    authn = from_table(
        tokens=[
            {"name": "carol", "subject": "CN=carol", "hosts": ["carol.example.com"]},
            {"name": "full", "subject": "CN=dave,O=Example"},
        ]
    )
    hello = Hello(versions=(1,), client_id="c1")
    carol = await authn.authenticate(hello, _certificate("CN=carol,O=Example", "carol"))
    assert carol == Identity("carol", ("carol.example.com",))
    full = await authn.authenticate(hello, _certificate("CN=dave,O=Example", "dave"))
    assert full == Identity("full")
    # a CN that spells another entry's whole subject does not match it: escaped as in the DN
    sneaky = _certificate("CN=dave\\,O=Example,O=Other", "dave,O=Example")
    assert await authn.authenticate(hello, sneaky) is None
    assert await authn.authenticate(hello, _certificate("CN=mallory", "mallory")) is None


TOKENS_FILE = f"""
# name:token[:hosts=...][:ports=...]
alice:alice-token:hosts=*.alice.example.com,alice.example.com:ports=20000-20010,8080

bob:sha256:{digest("bob-token")}
   carol : carol-token : ports=
dave:dave-token:ports=3000:hosts=dave.example.com
"""


def test_tokens_file_relative_to_the_configuration_file(tmp_path: Path) -> None:
    (tmp_path / "tokens.txt").write_text(TOKENS_FILE, encoding="utf-8")
    (tmp_path / "tokens.txt").chmod(0o600)
    config_file = tmp_path / "ferrotunnel.toml"
    config_file.write_text(
        '[auth]\ntokens_file = "tokens.txt"\n'
        '[[auth.tokens]]\nname = "erin"\ntoken = "erin-token"\n',
        encoding="utf-8",
    )
    authn = authenticator(load_toml(schema_of(auth, "auth"), config_file))
    assert authn.identify("alice-token") == Identity(
        "alice", ("*.alice.example.com", "alice.example.com"), ((20000, 20010), (8080, 8080))
    )
    assert authn.identify("bob-token") == Identity("bob")
    assert authn.identify("carol-token") == Identity("carol", None, ())
    assert authn.identify("dave-token") == Identity("dave", ("dave.example.com",), ((3000, 3000),))
    assert authn.identify("erin-token") == Identity("erin")
    assert authn.identify("mallory-token") is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("alice", "expected name:token"),
        (":token", "expected name:token"),
        ("alice:", "empty"),
        ("alice:sha256:abcd", "64 hexadecimal"),
        ("alice:se:cret-part", "unexpected field"),
        ("alice:token:ports=80-70", "80-70"),
        ("alice:token:ports=http", "PORT or LOW-HIGH"),
        ("alice:token:hosts=a:hosts=b", "unexpected field"),
        ("team/alice:token", "must not contain '/'"),
    ],
)
def test_tokens_file_errors_name_the_line_not_the_token(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "tokens.txt"
    path.write_text(f"# comment\n{line}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as error:
        auth.parse_tokens_file(path)
    assert "tokens.txt:2:" in str(error.value)
    assert "cret-part" not in str(error.value)


def test_a_name_with_a_slash_is_refused_in_the_file_too() -> None:
    """A scoped identity's tunnels are named ``IDENTITY/NAME``: with "/" in identity names,
    ``a`` + ``b/c`` and ``a/b`` + ``c`` would both be ``a/b/c``."""
    with pytest.raises(ValueError, match="must not contain '/'"):
        auth.TokenEntry(name="a/b", token="secret")


def test_configure_reports_a_missing_file(tmp_path: Path) -> None:
    host = PluginHost.with_plugins([auth], names=["auth"])
    config = config_of(auth, "auth", {"auth": {"tokens_file": str(tmp_path / "missing.txt")}})
    with pytest.raises(ConfigError, match=r"missing\.txt"):
        host.configure(config)


def test_the_same_token_twice_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    path.write_text("bob:shared\n", encoding="utf-8")
    config = config_of(
        auth,
        "auth",
        {"auth": {"tokens": [{"name": "alice", "token": "shared"}], "tokens_file": str(path)}},
    )
    with pytest.raises(ConfigError, match="same token") as error:
        auth.load_credentials(config)
    assert "shared" not in str(error.value)  # only the names appear
    assert "'alice'" in str(error.value)
    assert "'bob'" in str(error.value)


def test_tokens_never_reach_logs_or_reprs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tokens.txt"
    path.write_text("alice:very-secret-token\n", encoding="utf-8")
    path.chmod(0o644)
    caplog.set_level(logging.DEBUG)
    config = config_of(auth, "auth", {"auth": {"tokens_file": str(path)}})
    authn = authenticator(config)
    assert "readable by others" in caplog.text
    assert "very-secret-token" not in caplog.text
    assert "very-secret-token" not in repr(authn)
    assert "very-secret-token" not in repr(auth.load_credentials(config))


def test_no_tokens_means_no_authenticator() -> None:
    assert auth.ferrotunnel_authenticators(config_of(auth, "auth", {})) == []
