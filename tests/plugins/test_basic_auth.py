"""basic-auth: 401 with a challenge, then through without the Authorization header."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from ferrotunnel.core.errors import ConfigError
from ferrotunnel.plugins import basic_auth
from ferrotunnel.plugins._common import parse_sha256
from ferrotunnel.plugins.basic_auth import BasicAuth

from .helpers import FakeRequest, config_of, make_ctx

BOB_HASH = hashlib.sha256(b"hunter2:with:colons").hexdigest()


def middleware(**entries: Any) -> BasicAuth:
    config = config_of(basic_auth, "basic-auth", {"basic_auth": {"tunnels": entries}})
    [mw] = basic_auth.ferrotunnel_http_middlewares(config)
    return mw


def credentials(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


MW = middleware(
    **{
        "app.example.com": {"users": ["alice:secret", f"bob:sha256:{BOB_HASH}"], "realm": "stage"},
        "open.example.com": {"users": []},
        "*.example.com": {"users": ["carol:pw"], "forward_authorization": True},
    }
)


def test_401_with_a_challenge_then_200() -> None:
    request = FakeRequest()
    refused = MW.on_request(request, make_ctx())
    assert refused is not None
    assert refused.status == 401
    assert dict(refused.headers) == {"WWW-Authenticate": 'Basic realm="stage", charset="UTF-8"'}
    request = FakeRequest({"Authorization": credentials("alice", "secret"), "X-Keep": "1"})
    ctx = make_ctx()
    assert MW.on_request(request, ctx) is None
    assert request.header("Authorization") is None  # not forwarded
    assert request.header("X-Keep") == "1"
    assert ctx.state["basic_auth.user"] == "alice"


def test_wrong_or_malformed_credentials() -> None:
    for header in [
        credentials("alice", "wrong"),
        credentials("mallory", "secret"),
        credentials("alice", ""),
        "Bearer abc",
        "Basic !!!not-base64",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b"alice:\xff").decode(),
        "Basic",
        "Basic \u00e9t\u00e9",  # not ASCII
    ]:
        ctx = make_ctx()
        refused = MW.on_request(FakeRequest({"Authorization": header}), ctx)
        assert refused is not None, header
        assert refused.status == 401
        assert ctx.state["ferrotunnel.replied_by"] == "basic-auth"
        assert "basic_auth.user" not in ctx.state


def test_hashed_passwords_may_contain_colons() -> None:
    request = FakeRequest({"Authorization": credentials("bob", "hunter2:with:colons")})
    assert MW.on_request(request, make_ctx()) is None
    request = FakeRequest({"Authorization": credentials("bob", BOB_HASH)})
    assert MW.on_request(request, make_ctx()) is not None  # the digest is not the password


def test_scheme_is_case_insensitive() -> None:
    header = credentials("alice", "secret").replace("Basic", "basic")
    assert MW.on_request(FakeRequest({"Authorization": header}), make_ctx()) is None


def test_per_tunnel_settings() -> None:
    # an entry without users exempts its tunnels from the wildcard
    assert MW.on_request(FakeRequest(host="open.example.com"), make_ctx("open.example.com")) is None
    request = FakeRequest({"Authorization": credentials("carol", "pw")}, host="x.example.com")
    assert MW.on_request(request, make_ctx("x.example.com")) is None
    assert request.header("Authorization") is not None  # forward_authorization
    refused = MW.on_request(FakeRequest(host="x.example.com"), make_ctx("x.example.com"))
    assert refused is not None
    assert dict(refused.headers)["WWW-Authenticate"].startswith('Basic realm="ferrotunnel"')
    assert MW.on_request(FakeRequest(host="other.org"), make_ctx("other.org")) is None


def test_no_users_anywhere_means_no_middleware() -> None:
    config = config_of(basic_auth, "basic-auth", {"basic_auth": {"tunnels": {"*": {}}}})
    assert basic_auth.ferrotunnel_http_middlewares(config) == []


# 64 characters, but only 62 hexadecimal digits: bytes.fromhex would skip the spaces
SPACED_HASH = "ab" * 15 + "  " + "cd" * 16


@pytest.mark.parametrize("text", [SPACED_HASH, "ab" * 31 + "\tc", "ab" * 31 + "+1", "xy" * 32])
def test_a_digest_is_exactly_64_hexadecimal_digits(text: str) -> None:
    with pytest.raises(ValueError, match="64 hexadecimal digits"):
        parse_sha256(text)
    assert parse_sha256(f"  {BOB_HASH.upper()}\n") == bytes.fromhex(BOB_HASH)


def test_a_user_with_a_malformed_digest_is_a_configuration_error() -> None:
    """Not a user who can never log in."""
    with pytest.raises(ConfigError, match="bob"):
        middleware(**{"*": {"users": [f"bob:sha256:{SPACED_HASH}"]}})
