"""The dashboard's REST API, route by route and error by error, over a real tunnel."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import socket
import struct
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from ferrotunnel.core import Address

from ..e2e.helpers import free_port
from ..http.harness import (
    HOST,
    Origin,
    OriginRequest,
    OriginResponse,
    RawOrigin,
    raw_exchange,
    read_head,
)
from .conftest import APP, DashStack, dash_stack

pytestmark = pytest.mark.anyio

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"]
    return response.status_code, body["error"]["code"]


# ---------------------------------------------------------------------------- health, tunnels


async def test_health(stack: DashStack) -> None:
    body = (await stack.api.get("/api/v1/health")).json()
    assert body["status"] == "ok"
    assert body["tunnels"] == 1
    assert body["capture_limit"] == 64 * 1024


async def test_tunnels_show_status_and_urls(stack: DashStack) -> None:
    tunnels = (await stack.api.get("/api/v1/tunnels")).json()["tunnels"]
    assert len(tunnels) == 1
    tunnel = tunnels[0]
    assert tunnel["name"] == APP
    assert tunnel["status"] == "connected"
    assert tunnel["kind"] == "http"
    assert tunnel["local_addr"] == f"{HOST}:{stack.origin.port}"
    assert tunnel["public_url"] == stack.client.tunnels[0].public_url
    await stack.visitor.get("/counted")
    await stack.wait_for(1)
    one = (await stack.api.get(f"/api/v1/tunnels/{APP}")).json()
    assert one["requests"] == 1
    assert one["bytes_out"] > 0
    assert sum(sample[1] for sample in one["traffic"]) == 1
    assert await error_of(await stack.api.get("/api/v1/tunnels/nope")) == (404, "NOT_FOUND")


async def test_tunnel_status_follows_the_session() -> None:
    async with dash_stack(reconnect=True) as stack:
        assert stack.store.tunnels[APP].status == "connected"
        statuses: list[str] = []
        with stack.store.subscribe() as subscriber:
            session = stack.client.session
            assert session is not None
            session.abort()  # the connection drops: the client reconnects
            with anyio.fail_after(10):
                while statuses[-1:] != ["connected"]:
                    message = (await subscriber.queue.get()).decode()
                    if message.startswith("event: tunnel"):
                        statuses.append(json.loads(message.split("data: ", 1)[1])["status"])
        assert statuses == ["reconnecting", "connected"]
        tunnel = (await stack.api.get(f"/api/v1/tunnels/{APP}")).json()
        assert tunnel["status"] == "connected"
        store = stack.store
    assert store.tunnels[APP].status == "closed"


# ---------------------------------------------------------------------------- the request list


async def test_requests_newest_first_with_paging(stack: DashStack) -> None:
    for i in range(5):
        await stack.visitor.get(f"/page/{i}")
    await stack.wait_for(5)
    first = (await stack.api.get("/api/v1/requests?limit=2")).json()
    assert [r["path"] for r in first["requests"]] == ["/page/4", "/page/3"]
    second = (await stack.api.get(f"/api/v1/requests?limit=2&before={first['next_before']}")).json()
    assert [r["path"] for r in second["requests"]] == ["/page/2", "/page/1"]
    last = (await stack.api.get(f"/api/v1/requests?limit=2&before={second['next_before']}")).json()
    assert [r["path"] for r in last["requests"]] == ["/page/0"]
    assert last["next_before"] is None


async def test_requests_filters(stack: DashStack) -> None:
    await stack.visitor.get("/status/404")
    await stack.visitor.post("/items?color=red", content=b"x")
    await stack.visitor.get("/status/503")
    await stack.wait_for(3)

    async def paths(query: str) -> list[str]:
        body = (await stack.api.get(f"/api/v1/requests?{query}")).json()
        return [r["target"] for r in body["requests"]]

    assert await paths("status=4xx") == ["/status/404"]
    assert await paths("status=503") == ["/status/503"]
    assert await paths("method=post") == ["/items?color=red"]
    assert await paths("path=color%3Dred") == ["/items?color=red"]
    assert await paths(f"tunnel={APP}&status=5xx") == ["/status/503"]
    # paging follows the filter: no next page when no older row matches
    page = (await stack.api.get("/api/v1/requests?status=5xx&limit=1")).json()
    assert page["next_before"] is None
    assert await paths("tunnel=other") == []
    assert await paths("status=4XX") == await paths("status=%204xx%20") == ["/status/404"]
    assert await paths("status=pending") == []


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=501",
        "limit=x",
        "before=0",
        "before=y",
        "status=banana",
        "status=6xx",
        "status=99",
        "status=%C2%B2xx",  # a digit to str.isdigit(), not to int()
    ],
)
async def test_requests_bad_parameters(stack: DashStack, query: str) -> None:
    response = await stack.api.get(f"/api/v1/requests?{query}")
    assert await error_of(response) == (400, "INVALID_PARAMETER")


async def test_clear_forgets_every_request(stack: DashStack) -> None:
    await stack.visitor.get("/one")
    await stack.wait_for(1)
    assert (await stack.api.delete("/api/v1/requests")).status_code == 204
    assert (await stack.api.get("/api/v1/requests")).json()["requests"] == []


# ---------------------------------------------------------------------------- request detail


async def test_detail_has_headers_bodies_timing_visitor_and_trace(stack: DashStack) -> None:
    response = await stack.visitor.post(
        "/orders?id=7", json={"item": "widget", "qty": 2}, headers={"traceparent": TRACEPARENT}
    )
    assert response.status_code == 200
    (row,) = await stack.wait_for(1)
    detail = (await stack.api.get(f"/api/v1/requests/{row['id']}")).json()
    assert detail["method"] == "POST"
    assert detail["target"] == "/orders?id=7"
    assert detail["path"] == "/orders"
    assert detail["status"] == 200
    assert detail["visitor_ip"] == "127.0.0.1"
    assert isinstance(detail["visitor_port"], int)
    assert detail["trace_id"] == TRACE_ID
    assert ["traceparent", TRACEPARENT] in detail["request"]["headers"]
    body = detail["request"]["body"]
    assert body["kind"] == "json"
    assert json.loads(body["text"]) == {"item": "widget", "qty": 2}
    assert body["text"].startswith('{\n  "item"')  # pretty-printed
    answer = detail["response"]["body"]
    assert answer["kind"] == "json"
    assert answer["size"] == len(response.content)
    assert json.loads(answer["text"]) == response.json()
    assert ["x-origin", "origin"] in detail["response"]["headers"]
    timing = detail["timing"]
    assert 0 <= timing["ttfb_ms"] <= timing["duration_ms"] < 5000


async def test_binary_bodies_are_size_and_hex(stack: DashStack) -> None:
    payload = bytes(range(256)) * 4
    await stack.visitor.put("/blob", content=payload)
    (row,) = await stack.wait_for(1)
    body = (await stack.api.get(f"/api/v1/requests/{row['id']}")).json()["request"]["body"]
    assert body["kind"] == "binary"
    assert body["size"] == 1024
    first = body["text"].splitlines()[0]
    assert first == "00000000  00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f  |................|"


async def test_compressed_bodies_are_shown_decoded(stack: DashStack) -> None:
    await stack.visitor.get("/gzip")
    (row,) = await stack.wait_for(1)
    body = (await stack.api.get(f"/api/v1/requests/{row['id']}")).json()["response"]["body"]
    assert body["decoded_from"] == "gzip"
    assert body["text"] == "compressible text " * 500


async def test_capture_keeps_only_the_first_kib() -> None:
    async with dash_stack(capture_kib=1) as stack:
        payload = b"a" * 10_000
        response = await stack.visitor.post("/big", content=payload)
        assert response.json()["body_len"] == 10_000  # the origin got everything
        (row,) = await stack.wait_for(1)
        body = (await stack.api.get(f"/api/v1/requests/{row['id']}")).json()["request"]["body"]
        assert (body["size"], body["captured"], body["truncated"]) == (10_000, 1024, True)
        assert body["text"] == "a" * 1024


async def test_chunked_response_captured_and_decoded(stack: DashStack) -> None:
    response = await stack.visitor.get("/chunked")
    (row,) = await stack.wait_for(1)
    body = (await stack.api.get(f"/api/v1/requests/{row['id']}")).json()["response"]["body"]
    assert body["text"] == response.text == "".join(f"chunk {i};" for i in range(10))


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/api/v1/requests/999", (404, "NOT_FOUND")), ("/api/v1/requests/abc", (400, "INVALID_ID"))],
)
async def test_detail_errors(stack: DashStack, path: str, expected: tuple[int, str]) -> None:
    assert await error_of(await stack.api.get(path)) == expected


async def test_odd_ids_are_invalid_on_every_request_route(stack: DashStack) -> None:
    """Digits to ``str.isdigit()`` but not to ``int()``: a superscript two, Arabic-Indic
    digits, and more digits than ``int()`` converts."""
    await stack.visitor.get("/x")
    await stack.wait_for(1)
    for raw_id in ("%C2%B2", "%D9%A3", "9" * 5000):
        for route in ("", "/diff?against=1", "/export"):
            response = await stack.api.get(f"/api/v1/requests/{raw_id}{route}")
            assert await error_of(response) == (400, "INVALID_ID"), route
        response = await stack.api.post(f"/api/v1/requests/{raw_id}/replay", json={})
        assert await error_of(response) == (400, "INVALID_ID")


# ---------------------------------------------------------------------------- replay


async def test_replay_keeps_the_query_string_and_is_recorded(stack: DashStack) -> None:
    await stack.visitor.post("/search?q=tunnel&page=2", content=b"payload")
    (row,) = await stack.wait_for(1)
    response = await stack.api.post(f"/api/v1/requests/{row['id']}/replay", json={})
    assert response.status_code == 201
    replay = response.json()
    assert replay["replay_of"] == row["id"]
    assert replay["status"] == 200
    echo = json.loads(replay["response"]["body"]["text"])
    assert echo["target"] == "/search?q=tunnel&page=2"
    assert echo["method"] == "POST"
    assert echo["body_len"] == len(b"payload")
    assert ["host", APP] in echo["headers"]
    rows = (await stack.api.get("/api/v1/requests")).json()["requests"]
    assert [(r["id"], r["replay_of"]) for r in rows] == [
        (replay["id"], row["id"]),
        (row["id"], None),
    ]


async def test_replay_with_edits(stack: DashStack) -> None:
    await stack.visitor.get("/original", headers={"x-keep": "1"})
    (row,) = await stack.wait_for(1)
    edits = {
        "method": "put",
        "path": "/edited?v=2",
        "headers": [["Host", APP], ["X-Edited", "yes"]],
        "body": "new body",
    }
    replay = (await stack.api.post(f"/api/v1/requests/{row['id']}/replay", json=edits)).json()
    echo = json.loads(replay["response"]["body"]["text"])
    assert (echo["method"], echo["target"]) == ("PUT", "/edited?v=2")
    assert ["x-edited", "yes"] in echo["headers"]
    assert "x-keep" not in dict(echo["headers"])
    assert echo["body_len"] == len("new body")
    binary = {"body_base64": "AAEC", "headers": {"Host": APP}}
    replay = (await stack.api.post(f"/api/v1/requests/{row['id']}/replay", json=binary)).json()
    assert json.loads(replay["response"]["body"]["text"])["body_len"] == 3


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        ("{}", "text/plain", (415, "UNSUPPORTED_MEDIA_TYPE")),
        ("{not json", "application/json", (400, "INVALID_JSON")),
        ("[1]", "application/json", (400, "INVALID_JSON")),
        ('{"colour": 1}', "application/json", (400, "INVALID_EDIT")),
        ('{"method": "G T"}', "application/json", (400, "INVALID_EDIT")),
        ('{"path": "no-slash"}', "application/json", (400, "INVALID_EDIT")),
        ('{"headers": [["Bad Name", "v"]]}', "application/json", (400, "INVALID_EDIT")),
        ('{"headers": [["X", "a\\r\\nb"]]}', "application/json", (400, "INVALID_EDIT")),
        ('{"body": "a", "body_base64": "YQ=="}', "application/json", (400, "INVALID_EDIT")),
        ('{"body_base64": "***"}', "application/json", (400, "INVALID_EDIT")),
        ("[" * 100_000, "application/json", (400, "INVALID_JSON")),  # too deep to parse
        ('{"body_base64": null}', "application/json", (400, "INVALID_EDIT")),
        ('{"body_base64": 5}', "application/json", (400, "INVALID_EDIT")),
        ('{"body": "\\ud800"}', "application/json", (400, "INVALID_EDIT")),  # not UTF-8
        ('{"path": "/a\\tb"}', "application/json", (400, "INVALID_EDIT")),
        ('{"path": "/a\\u007fb"}', "application/json", (400, "INVALID_EDIT")),
        ('{"headers": [["X-\\u2603", "1"]]}', "application/json", (400, "INVALID_EDIT")),
        ('{"headers": [["X(1)", "1"]]}', "application/json", (400, "INVALID_EDIT")),
        ('{"headers": [["X", "\\u2603"]]}', "application/json", (400, "INVALID_EDIT")),
        ('{"headers": [["X", "a\\u0000b"]]}', "application/json", (400, "INVALID_EDIT")),
    ],
)
async def test_replay_rejects_bad_requests(
    stack: DashStack, body: str, content_type: str, expected: tuple[int, str]
) -> None:
    await stack.visitor.get("/x")
    (row,) = await stack.wait_for(1)
    response = await stack.api.post(
        f"/api/v1/requests/{row['id']}/replay",
        content=body.encode(),
        headers={"content-type": content_type},
    )
    assert await error_of(response) == expected


async def test_replay_percent_encodes_a_non_ascii_path(stack: DashStack) -> None:
    """As a browser does with a URL typed in its address bar."""
    await stack.visitor.get("/x")
    (row,) = await stack.wait_for(1)
    edits = {
        "path": "/caf\u00e9/\u65e5\u672c?q=a%20b&r=\u00e9",
        "headers": [["Host", APP], ["X-Name", "caf\u00e9\tau lait"]],
    }
    response = await stack.api.post(f"/api/v1/requests/{row['id']}/replay", json=edits)
    assert response.status_code == 201, response.text
    echo = json.loads(response.json()["response"]["body"]["text"])
    assert echo["target"] == "/caf%C3%A9/%E6%97%A5%E6%9C%AC?q=a%20b&r=%C3%A9"


async def test_replay_of_an_unknown_request(stack: DashStack) -> None:
    response = await stack.api.post("/api/v1/requests/77/replay", json={})
    assert await error_of(response) == (404, "NOT_FOUND")


async def test_replay_refuses_a_truncated_body_unless_edited() -> None:
    async with dash_stack(capture_kib=1) as stack:
        await stack.visitor.post("/upload", content=b"z" * 5000)
        (row,) = await stack.wait_for(1)
        url = f"/api/v1/requests/{row['id']}/replay"
        assert await error_of(await stack.api.post(url, json={})) == (409, "BODY_TRUNCATED")
        response = await stack.api.post(url, json={"body": "short"})
        assert response.status_code == 201
        assert json.loads(response.json()["response"]["body"]["text"])["body_len"] == 5


def replay_to(stack: DashStack, port: int) -> None:
    """Replays of the tunnel's requests go to ``port`` from now on."""
    running = stack.plugin.running(stack.client)
    assert running is not None
    tunnel = running.ctx.tunnels[APP]
    running.ctx.tunnels[APP] = dataclasses.replace(tunnel, local_addr=Address(HOST, port))


async def test_replay_to_a_dead_origin_is_a_502_and_a_row(stack: DashStack) -> None:
    await stack.visitor.get("/x")
    (row,) = await stack.wait_for(1)
    replay_to(stack, free_port())
    response = await stack.api.post(f"/api/v1/requests/{row['id']}/replay", json={})
    assert await error_of(response) == (502, "REPLAY_FAILED")
    rows = (await stack.api.get("/api/v1/requests")).json()["requests"]
    assert rows[0]["replay_of"] == row["id"]
    assert rows[0]["state"] == "error"
    assert "cannot connect" in rows[0]["error"]


#: more than loopback's socket buffers hold, so that sending it waits for the origin to read
BIG_BODY = "x" * (32 << 20)


async def test_replay_reset_while_sending_is_a_502_and_a_row(stack: DashStack) -> None:
    """The origin reads the head and resets the connection (an upload it refuses)."""

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # closing with SO_LINGER 0 sends RST

    await stack.visitor.post("/upload", content=b"abc")
    (row,) = await stack.wait_for(1)
    async with RawOrigin(reset) as origin:
        replay_to(stack, origin.port)
        url = f"/api/v1/requests/{row['id']}/replay"
        response = await stack.api.post(url, json={"body": BIG_BODY})
    assert await error_of(response) == (502, "REPLAY_FAILED")
    rows = (await stack.api.get("/api/v1/requests")).json()["requests"]
    assert rows[0]["replay_of"] == row["id"]
    assert rows[0]["state"] == "error"
    assert rows[0]["error"].startswith("the connection broke"), rows[0]["error"]


async def test_replay_records_an_answer_that_comes_before_the_body_is_sent(
    stack: DashStack,
) -> None:
    """The origin answers 413 after the head and reads no further."""

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\n\r\ntoo big\n")
        await writer.drain()
        await anyio.sleep(30)  # holds the connection open, unread, until the test ends

    await stack.visitor.post("/upload", content=b"abc")
    (row,) = await stack.wait_for(1)
    async with RawOrigin(refuse) as origin:
        replay_to(stack, origin.port)
        url = f"/api/v1/requests/{row['id']}/replay"
        response = await stack.api.post(url, json={"body": BIG_BODY})
    assert response.status_code == 201, response.text
    assert response.json()["status"] == 413
    assert response.json()["response"]["body"]["text"] == "too big\n"


# ---------------------------------------------------------------------------- failures


class LateOrigin(Origin):
    """The local service, down (its port refuses connections) until ``start``."""

    def __init__(self) -> None:
        super().__init__()
        self.port = free_port()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, HOST, self.port, limit=1 << 20)

    async def __aenter__(self) -> LateOrigin:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            await super().__aexit__(*exc_info)


async def test_a_refused_request_is_listed_live_as_the_502_it_got() -> None:
    """The local service is down: the visitor's request is still listed (live and in the
    list), with the ingress's 502 and why; once the service is up, it replays as usual."""
    origin = LateOrigin()
    async with dash_stack(origin=origin) as stack:
        seen: list[dict[str, object]] = []
        async with stack.api.stream("GET", "/api/v1/events") as events:
            event = ""
            with anyio.fail_after(5):
                async for line in events.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "hello":
                        response = await stack.visitor.post(
                            "/orders?id=7", json={"qty": 2}, headers={"x-debug": "on"}
                        )
                    elif line.startswith("data: ") and event == "request":
                        seen.append(json.loads(line[6:]))
                        if seen[-1]["state"] != "pending":
                            break
        assert response.status_code == 502
        refused = f"the local service at {HOST}:{origin.port} refused the connection"
        live = seen[-1]
        assert (live["method"], live["target"], live["status"]) == ("POST", "/orders?id=7", 502)
        assert (live["state"], live["error"]) == ("error", refused)
        (row,) = (await stack.api.get("/api/v1/requests")).json()["requests"]
        assert row == live
        assert (await stack.api.get("/api/v1/requests?status=5xx")).json()["requests"] == [row]
        detail = (await stack.api.get(f"/api/v1/requests/{row['id']}")).json()
        assert ["x-debug", "on"] in detail["request"]["headers"]
        assert json.loads(detail["request"]["body"]["text"]) == {"qty": 2}
        assert (detail["status"], detail["reason"]) == (502, "Bad Gateway")
        assert detail["response"] is None  # the 502 is the ingress's: the origin said nothing
        exported = await stack.api.get(f"/api/v1/requests/{row['id']}/export?format=pytest")
        assert "status_code ==" not in exported.text  # so an exported test does not expect it

        await origin.start()
        replayed = await stack.api.post(f"/api/v1/requests/{row['id']}/replay", json={})
        assert replayed.status_code == 201, replayed.text
        answer = replayed.json()
        assert (answer["status"], answer["replay_of"], answer["state"]) == (
            200,
            row["id"],
            "complete",
        )
        echoed = json.loads(answer["response"]["body"]["text"])
        assert (echoed["method"], echoed["target"]) == ("POST", "/orders?id=7")
        assert echoed["body_len"] == len(b'{"qty":2}')  # the body as the visitor sent it
        assert ["x-debug", "on"] in echoed["headers"]


async def _close_after_the_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)


async def _reset_after_the_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # closing with SO_LINGER 0 sends RST


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        (_close_after_the_head, "no response"),
        (_reset_after_the_head, "Connection reset by peer"),
    ],
    ids=["closed", "reset"],
)
async def test_a_request_the_local_service_dropped_unanswered_is_listed_as_the_502_it_got(
    handler: object, error: str
) -> None:
    async with dash_stack(origin=RawOrigin(handler)) as stack:  # type: ignore[arg-type]
        response = await stack.visitor.get("/dropped")
        assert response.status_code == 502
        (row,) = await stack.wait_for(1)
    assert (row["target"], row["status"], row["state"]) == ("/dropped", 502, "error")
    assert row["error"].endswith(error)


# ---------------------------------------------------------------------------- diff


async def test_diff_of_a_replay_against_its_original() -> None:
    answers = iter([b"first answer\nline two\n", b"second answer\nline two\n"])

    async def handler(request: OriginRequest) -> OriginResponse:
        if request.path == "/same":
            return OriginResponse(200, [("content-type", "text/plain")], b"always this")
        return OriginResponse(200, [("content-type", "text/plain")], next(answers))

    async with dash_stack(handler) as stack:
        await stack.visitor.get("/changes")
        await stack.visitor.get("/same")
        first, second = (await stack.wait_for(2))[::-1]
        changed = (await stack.api.post(f"/api/v1/requests/{first['id']}/replay", json={})).json()
        diff = (await stack.api.get(f"/api/v1/requests/{changed['id']}/diff")).json()
        assert diff["same"] is False
        assert (diff["original"], diff["replay"]) == (first["id"], changed["id"])
        assert diff["status"] == {"original": 200, "replay": 200}
        assert "-first answer" in diff["body"]["diff"]
        assert "+second answer" in diff["body"]["diff"]
        same = (await stack.api.post(f"/api/v1/requests/{second['id']}/replay", json={})).json()
        diff = (await stack.api.get(f"/api/v1/requests/{same['id']}/diff")).json()
        assert diff["same"] is True, diff
        # any two requests, with ?against=
        diff = await stack.api.get(f"/api/v1/requests/{second['id']}/diff?against={first['id']}")
        assert diff.json()["body"]["same"] is False


async def test_diff_errors(stack: DashStack) -> None:
    await stack.visitor.get("/x")
    (row,) = await stack.wait_for(1)
    url = f"/api/v1/requests/{row['id']}/diff"
    assert await error_of(await stack.api.get(url)) == (400, "NO_BASELINE")
    assert await error_of(await stack.api.get(url + "?against=999")) == (404, "NOT_FOUND")
    assert await error_of(await stack.api.get(url + "?against=x")) == (400, "INVALID_PARAMETER")
    assert await error_of(await stack.api.get("/api/v1/requests/5/diff")) == (404, "NOT_FOUND")


# ---------------------------------------------------------------------------- export


async def test_export_curl_runs(stack: DashStack) -> None:
    await stack.visitor.post("/curl?x=1", content=b"it's data", headers={"x-quote": "a'b"})
    (row,) = await stack.wait_for(1)
    command = (await stack.api.get(f"/api/v1/requests/{row['id']}/export?format=curl")).text
    assert command.startswith("curl ")
    result = await anyio.run_process(["bash", "-c", command], check=False)
    assert result.returncode == 0, result.stderr
    echo = json.loads(result.stdout)
    assert (echo["method"], echo["target"], echo["body_len"]) == ("POST", "/curl?x=1", 9)
    assert ["x-quote", "a'b"] in echo["headers"]


async def test_export_curl_of_a_visitors_method_runs_no_shell_code(
    stack: DashStack, tmp_path: Path
) -> None:
    method = b"GET&touch$IFS'pwned'&"  # token characters: the ingress passes it on
    request = method + b" /x HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % APP.encode()
    await raw_exchange(stack.public_port, request)
    (row,) = await stack.wait_for(1)
    assert row["method"] == method.decode()
    command = (await stack.api.get(f"/api/v1/requests/{row['id']}/export?format=curl")).text
    result = await anyio.run_process(["bash", "-c", command], cwd=tmp_path, check=False)
    assert not (tmp_path / "pwned").exists(), command
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["method"] == method.decode()


async def test_export_curl_with_a_binary_body_runs(stack: DashStack) -> None:
    await stack.visitor.put("/bin", content=bytes(range(256)))
    (row,) = await stack.wait_for(1)
    command = (await stack.api.get(f"/api/v1/requests/{row['id']}/export?format=curl")).text
    result = await anyio.run_process(["bash", "-c", command], check=False)
    assert result.returncode == 0, result.stderr
    echo = json.loads(result.stdout)
    assert echo["body_sha256"] == hashlib.sha256(bytes(range(256))).hexdigest()


async def test_export_public_curl_goes_through_the_tunnel(stack: DashStack) -> None:
    await stack.visitor.get("/via-public")
    (row,) = await stack.wait_for(1)
    url = f"/api/v1/requests/{row['id']}/export?format=curl&target=public"
    command = (await stack.api.get(url)).text
    public = stack.client.tunnels[0].public_url
    assert public in command
    assert "'host: " not in command.lower()  # the URL's own host stands


async def test_export_har(stack: DashStack) -> None:
    await stack.visitor.post("/har?a=1&b=two", json={"k": "v"})
    (row,) = await stack.wait_for(1)
    response = await stack.api.get(f"/api/v1/requests/{row['id']}/export?format=har")
    assert "attachment" in response.headers["content-disposition"]
    har = response.json()["log"]
    assert har["version"] == "1.2"
    (entry,) = har["entries"]
    request = entry["request"]
    assert request["method"] == "POST"
    assert request["url"] == f"http://{HOST}:{stack.origin.port}/har?a=1&b=two"
    assert request["queryString"] == [{"name": "a", "value": "1"}, {"name": "b", "value": "two"}]
    assert json.loads(request["postData"]["text"]) == {"k": "v"}
    assert entry["response"]["status"] == 200
    assert json.loads(entry["response"]["content"]["text"])["target"] == "/har?a=1&b=two"
    assert entry["startedDateTime"].endswith("Z")
    assert entry["time"] >= entry["timings"]["wait"] >= 0


async def test_export_pytest_is_a_passing_test(stack: DashStack, tmp_path: Path) -> None:
    await stack.visitor.post("/status/201", content=b"{}")
    await stack.visitor.get("/cookie")
    rows = await stack.wait_for(2)
    for row in rows:
        url = f"/api/v1/requests/{row['id']}/export?format=pytest"
        source = (await stack.api.get(url)).text
        path = tmp_path / f"test_generated_{row['id']}.py"
        path.write_text(source)
        result = await anyio.run_process(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)],
            check=False,
            cwd=tmp_path,
        )
        assert result.returncode == 0, source + result.stdout.decode()
    # and it checks something: a changed answer makes it fail
    source = re.sub(r"status_code == \d+", "status_code == 299", path.read_text())
    path.write_text(source)
    result = await anyio.run_process(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)], check=False
    )
    assert result.returncode == 1


@pytest.mark.parametrize(
    ("query", "expected"),
    [("format=xml", (400, "INVALID_PARAMETER")), ("target=moon", (400, "INVALID_PARAMETER"))],
)
async def test_export_errors(stack: DashStack, query: str, expected: tuple[int, str]) -> None:
    await stack.visitor.get("/x")
    (row,) = await stack.wait_for(1)
    response = await stack.api.get(f"/api/v1/requests/{row['id']}/export?{query}")
    assert await error_of(response) == expected


# ---------------------------------------------------------------------------- events (SSE)


async def test_events_push_requests_as_they_happen(stack: DashStack) -> None:
    async with stack.api.stream("GET", "/api/v1/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        seen: list[tuple[str, dict[str, object]]] = []
        event = ""
        with anyio.fail_after(5):
            async for line in lines:
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    seen.append((event, json.loads(line[6:])))
                    if event == "hello":
                        await stack.visitor.get("/live?x=1")
                    if event == "request" and seen[-1][1]["state"] == "complete":
                        break
    kinds = [kind for kind, _ in seen]
    assert kinds[0] == "hello"
    assert kinds[1:] == ["request", "request"]  # pending at the head, then complete
    data = seen[-1][1]
    assert (data["target"], data["status"], data["tunnel"]) == ("/live?x=1", 200, APP)


# ---------------------------------------------------------------------------- the rest


async def test_metrics_in_prometheus_text_format(stack: DashStack) -> None:
    from prometheus_client import CollectorRegistry, Counter
    from prometheus_client.parser import text_string_to_metric_families

    running = stack.plugin.running(stack.client)
    assert running is not None
    registry = CollectorRegistry()
    Counter("test_things", "things counted", registry=registry).inc(3)
    running.ctx.registry = registry
    response = await stack.api.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert families["test_things"].samples[0].value == 3


async def test_unknown_routes_and_methods_are_json_errors(stack: DashStack) -> None:
    assert await error_of(await stack.api.get("/api/v1/nope")) == (404, "NOT_FOUND")
    assert await error_of(await stack.api.get("/api/v2/health")) == (404, "NOT_FOUND")
    response = await stack.api.put("/api/v1/health")
    assert await error_of(response) == (405, "METHOD_NOT_ALLOWED")
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}
    response = await stack.api.put("/api/v1/requests")
    assert await error_of(response) == (405, "METHOD_NOT_ALLOWED")
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "DELETE"}


@pytest.mark.parametrize("path", ["/api/v1/requests", "/", "/static/app.js", "/api/v1/nope"])
@pytest.mark.parametrize("host", ["evil.example:4040", "127.0.0.1.evil.example", "[::2]:4040"])
async def test_a_foreign_host_is_refused_with_a_json_error(
    stack: DashStack, path: str, host: str
) -> None:
    """DNS rebinding: a page at evil.example resolving to 127.0.0.1 gets nothing but the
    error, in the format of every other."""
    response = await stack.api.get(path, headers={"host": host})
    assert await error_of(response) == (400, "INVALID_HOST")
    assert response.headers["content-type"] == "application/json"
    assert host in response.json()["error"]["message"]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:4040", "LOCALHOST:1", "[::1]:4040"])
async def test_a_loopback_host_is_served(stack: DashStack, host: str) -> None:
    response = await stack.api.get("/api/v1/health", headers={"host": host})
    assert response.json()["status"] == "ok"


async def test_the_ui_is_served_from_the_package(stack: DashStack) -> None:
    page = await stack.api.get("/")
    assert page.status_code == 200
    assert '<script type="module" src="/static/app.js">' in page.text
    script = await stack.api.get("/static/app.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert "EventSource" in script.text
    assert "http://" not in script.text.replace("http://www.w3.org/2000/svg", "")  # no CDN
    assert (await stack.api.get("/static/style.css")).status_code == 200


async def test_dashboard_on_a_busy_port_warns_and_the_client_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with dash_stack() as first:
        port = int(first.dashboard_url.rsplit(":", 1)[1])
        async with dash_stack(port=port) as second:
            assert second.client.endpoints["dashboard"].startswith("unavailable")
            assert second.plugin.running(second.client) is None
            assert (await second.visitor.get("/still-works")).status_code == 200
    assert any("cannot listen" in r.getMessage() for r in caplog.records)


async def test_in_process_tunnels_cannot_be_replayed_or_exported_to_an_origin(
    stack: DashStack,
) -> None:
    await stack.visitor.get("/x")
    (row,) = await stack.wait_for(1)
    running = stack.plugin.running(stack.client)
    assert running is not None

    async def handler(stream: object) -> None:
        raise AssertionError("never called")

    tunnel = running.ctx.tunnels[APP]
    running.ctx.tunnels[APP] = dataclasses.replace(tunnel, local_addr=None, handler=handler)
    base = f"/api/v1/requests/{row['id']}"
    response = await stack.api.post(f"{base}/replay", json={})
    assert await error_of(response) == (422, "NOT_REPLAYABLE")
    response = await stack.api.get(f"{base}/export?format=curl")
    assert await error_of(response) == (422, "NO_ORIGIN")
    running.ctx.public_urls.clear()
    response = await stack.api.get(f"{base}/export?format=har&target=public")
    assert await error_of(response) == (422, "NO_PUBLIC_URL")
    del running.ctx.tunnels[APP]  # a request of a tunnel this client no longer has
    response = await stack.api.post(f"{base}/replay", json={})
    assert await error_of(response) == (422, "NOT_REPLAYABLE")
