"""headers: remove, then set, then add — on requests and responses, per tunnel."""

from __future__ import annotations

from typing import Any

import pytest

from ferrotunnel.core.errors import ConfigError
from ferrotunnel.plugins import headers
from ferrotunnel.plugins.headers import RequestHeaders, ResponseHeaders

from .helpers import FakeRequest, FakeResponse, config_of, make_ctx


def middlewares(**entries: Any) -> list[RequestHeaders | ResponseHeaders]:
    config = config_of(headers, "headers", {"headers": {"tunnels": entries}})
    return headers.ferrotunnel_http_middlewares(config)


RULES = {
    "*": {
        "request_set": {"X-Tunnel": "any"},
        "response_set": {"Strict-Transport-Security": "max-age=31536000"},
        "response_remove": ["Server", "x-powered-by"],
    },
    "api.example.com": {
        "request_set": {"X-Tunnel": "api", "X-Origin-Proto": "https"},
        "request_add": {"Via": "1.1 ferrotunnel", "X-New": "fresh"},
        "request_remove": ["Cookie", "X-Tunnel"],
        "response_add": {"Vary": "Origin"},
        "response_set": {"Cache-Control": "no-store"},
    },
}


def test_request_and_response_edits() -> None:
    request_mw, response_mw = middlewares(**RULES)
    assert isinstance(request_mw, RequestHeaders)
    assert isinstance(response_mw, ResponseHeaders)
    request = FakeRequest(
        {"Cookie": "a=b", "Via": "1.1 proxy", "X-Tunnel": "client's", "Accept": "*/*"},
        host="api.example.com",
    )
    ctx = make_ctx(host="api.example.com", tunnel="api")
    assert request_mw.on_request(request, ctx) is None
    assert request.as_dict() == {
        "Accept": "*/*",
        "Via": "1.1 proxy, 1.1 ferrotunnel",
        "X-Tunnel": "api",  # removed, then set
        "X-Origin-Proto": "https",
        "X-New": "fresh",
    }
    response = FakeResponse(
        200, {"Server": "nginx", "Vary": "Accept", "Cache-Control": "max-age=60"}
    )
    response_mw.on_response(response, ctx)
    assert response.as_dict() == {
        "Server": "nginx",  # the api entry applies alone: entries are not merged
        "Vary": "Accept, Origin",
        "Cache-Control": "no-store",
    }


def test_the_wildcard_entry() -> None:
    request_mw, response_mw = middlewares(**RULES)
    assert isinstance(request_mw, RequestHeaders)
    assert isinstance(response_mw, ResponseHeaders)
    request = FakeRequest({"X-Tunnel": "client's"})
    ctx = make_ctx()
    request_mw.on_request(request, ctx)
    assert request.as_dict() == {"X-Tunnel": "any"}
    response = FakeResponse(200, {"Server": "nginx", "X-Powered-By": "php", "ETag": '"1"'})
    response_mw.on_response(response, ctx)
    assert response.as_dict() == {
        "ETag": '"1"',
        "Strict-Transport-Security": "max-age=31536000",
    }


def test_only_the_directions_in_use() -> None:
    assert middlewares() == []
    assert middlewares(**{"*": {}}) == []
    [only] = middlewares(**{"*": {"response_remove": ["Server"]}})
    assert isinstance(only, ResponseHeaders)
    assert not hasattr(only, "on_request")
    [only_request] = middlewares(**{"*": {"request_add": {"Via": "x"}}})
    assert isinstance(only_request, RequestHeaders)
    assert not hasattr(only_request, "on_response")


@pytest.mark.parametrize(
    "name", ["X-Forwarded-For", "x-forwarded-proto", "X-Forwarded-Host", "Forwarded"]
)
@pytest.mark.parametrize("key", ["request_set", "request_add", "request_remove"])
def test_request_forwarding_headers_are_refused(key: str, name: str) -> None:
    """The ingress writes them after the plugins: an edit would be silently undone."""
    entry = {key: [name] if key == "request_remove" else {name: "x"}}
    with pytest.raises(ConfigError, match="set by the ingress"):
        middlewares(**{"*": entry})
    [response_mw] = middlewares(**{"*": {"response_remove": [name]}})  # responses: theirs
    assert isinstance(response_mw, ResponseHeaders)


def test_the_edits_run_in_order_on_every_message() -> None:
    """remove, then set, then add: HeaderOps.apply and the middlewares' inline loop alike, on
    each message (the calls are made once, when the plugin is built)."""
    ops = headers.HeaderOps(("Server",), (("X-Set", "1"), ("Vary", "A")), (("Vary", "B"),))
    assert len(ops.edits) == 4
    assert ops == headers.HeaderOps(("Server",), (("X-Set", "1"), ("Vary", "A")), (("Vary", "B"),))
    assert not headers.HeaderOps((), (), ())
    for _ in range(2):
        response = FakeResponse(200, {"server": "nginx", "vary": "Accept", "X-SET": "0"})
        ops.apply(response)
        assert response.lines == [("X-Set", "1"), ("Vary", "A"), ("Vary", "B")]
    [response_mw] = middlewares(**{"*": {"response_set": {"X-Served-By": "ferrotunnel"}}})
    assert isinstance(response_mw, ResponseHeaders)
    for existing in ({}, {"x-served-by": "origin"}, {"X-SERVED-BY": "a", "X-Served-By": "b"}):
        response = FakeResponse(200, {"ETag": '"1"', **existing})
        response_mw.on_response(response, make_ctx())
        assert response.lines == [("ETag", '"1"'), ("X-Served-By", "ferrotunnel")]


def test_response_set_on_a_parsed_head() -> None:
    """On the ingress's own response heads: an absent header is appended to the head as it
    came, one the origin sent (in any case) is replaced."""
    from ferrotunnel.http.h1 import parse_response_head

    [response_mw] = middlewares(**{"*": {"response_set": {"X-Served-By": "ferrotunnel"}}})
    assert isinstance(response_mw, ResponseHeaders)
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    head = parse_response_head(raw, b"GET")
    response_mw.on_response(head, make_ctx())
    assert head.modified
    assert head.serialize() == raw[:-2] + b"X-Served-By: ferrotunnel\r\n\r\n"
    head = parse_response_head(raw[:-2] + b"x-served-by: origin\r\n\r\n", b"GET")
    response_mw.on_response(head, make_ctx())
    assert head.serialize() == raw[:-2] + b"X-Served-By: ferrotunnel\r\n\r\n"
