"""Endpoints that are not public ingress — the client's dashboard, the metrics endpoints —
listen on 127.0.0.1 unless told otherwise, and show no secret: after a whole session with a
token, none of their pages or API answers contains it."""

from __future__ import annotations

import json
import secrets
import urllib.request
from collections.abc import Iterator

import pytest

from ferrotunnel.observability.dashboard import DashboardSettings
from ferrotunnel.observability.metrics import MetricsSettings
from tests.e2e.helpers import CONTROL_RE, HOST, free_port
from tests.http.test_cli import HTTP_INGRESS_RE, ThreadedOrigin, answer, curl

from .tls_helpers import Launch

CURL_HOST = "app.localhost"


@pytest.fixture
def origin() -> Iterator[ThreadedOrigin]:
    server = ThreadedOrigin("app")
    yield server
    server.stop()


def test_local_endpoints_default_to_loopback() -> None:
    assert DashboardSettings().bind == "127.0.0.1"
    assert MetricsSettings().bind.startswith("127.0.0.1:")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


def test_no_token_in_metrics_or_dashboard(launch: Launch, origin: ThreadedOrigin) -> None:
    token = "tok-" + secrets.token_hex(12)
    metrics_port = free_port()
    server = launch(
        "server", "--token", token, "--bind", f"{HOST}:0", "--http-bind", f"{HOST}:0",
        "--metrics", "--metrics-bind", f"{HOST}:{metrics_port}",
    )  # fmt: skip
    control = server.expect(CONTROL_RE)["port"]
    ingress = int(server.expect(HTTP_INGRESS_RE)["port"])
    server.expect(r"^Press Ctrl-C to stop\.$")
    client = launch(
        "client", "--server", f"{HOST}:{control}", "--token", token,
        "--local-addr", f"{HOST}:{origin.port}", "--tunnel-id", CURL_HOST,
        "--dashboard-port", "0",
    )  # fmt: skip
    dashboard = client.expect(r"^\s+dashboard: (?P<url>http://127\.0\.0\.1:\d+)/?$")["url"]
    code, _ = answer(curl(f"http://{HOST}:{ingress}/hello", "-H", f"Host: {CURL_HOST}"))
    assert code == 200

    pages = {
        "server /metrics": _get(f"http://{HOST}:{metrics_port}/metrics"),
        "dashboard /": _get(dashboard + "/"),
        "dashboard /metrics": _get(dashboard + "/metrics"),
        "tunnels": _get(dashboard + "/api/v1/tunnels"),
        "health": _get(dashboard + "/api/v1/health"),
    }
    pages["requests"] = _get(dashboard + "/api/v1/requests")
    request_ids = [entry["id"] for entry in json.loads(pages["requests"])["requests"]]
    assert request_ids, pages["requests"]
    for request_id in request_ids:
        pages[f"request {request_id}"] = _get(f"{dashboard}/api/v1/requests/{request_id}")
        export = f"{dashboard}/api/v1/requests/{request_id}/export"
        for kind in ("curl", "har", "pytest"):
            pages[f"export {kind}"] = _get(f"{export}?format={kind}")
    for name, text in pages.items():
        assert token not in text, f"the token appears in {name}"
    assert token not in server.stdout + server.stderr + client.stdout + client.stderr
