"""The HTTP ingress end to end through the real ``ferrotunnel`` processes and curl.

Synchronous: the server and client are child processes, the origins are threaded
``http.server`` instances, curl is a subprocess; every wait is bounded."""

from __future__ import annotations

import http.server
import json
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.e2e.helpers import CONTROL_RE, HOST, CliProcess

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not Path("/usr/bin/curl").exists(), reason="curl is not installed"),
]

TOKEN = "cli-http-token"
HTTP_INGRESS_RE = r"^\s+HTTP ingress\s+(?P<host>\S+):(?P<port>\d+)$"
Launch = Callable[..., CliProcess]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    name = "origin"

    def do_GET(self) -> None:
        body = json.dumps(
            {
                "origin": self.name,
                "path": self.path,
                "host": self.headers.get("Host"),
                "forwarded_host": self.headers.get("X-Forwarded-Host"),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class ThreadedOrigin:
    def __init__(self, name: str, context: ssl.SSLContext | None = None) -> None:
        handler = type(f"Handler_{name}", (_Handler,), {"name": name})
        self.server = http.server.ThreadingHTTPServer((HOST, 0), handler)
        self.server.daemon_threads = True
        if context is not None:
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}
        )
        self.thread.daemon = True
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def launch() -> Iterator[Launch]:
    started: list[CliProcess] = []

    def start(*args: str) -> CliProcess:
        proc = CliProcess(list(args))
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


@pytest.fixture
def origins() -> Iterator[Callable[..., ThreadedOrigin]]:
    started: list[ThreadedOrigin] = []

    def start(name: str, context: ssl.SSLContext | None = None) -> ThreadedOrigin:
        origin = ThreadedOrigin(name, context)
        started.append(origin)
        return origin

    yield start
    for origin in started:
        origin.stop()


def start_server(launch: Launch) -> tuple[CliProcess, str, int]:
    server = launch("server", "--token", TOKEN, "--bind", f"{HOST}:0", "--http-bind", f"{HOST}:0")
    control = server.expect(CONTROL_RE)
    ingress = server.expect(HTTP_INGRESS_RE)
    server.expect(r"^Press Ctrl-C to stop\.$")
    return server, f"{HOST}:{control['port']}", int(ingress["port"])


def client_args(control: str, *extra: str) -> list[str]:
    return ["client", "--server", control, "--token", TOKEN, "--no-dashboard", *extra]


def curl(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "/usr/bin/curl",
            "--silent",
            "--show-error",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )


def answer(result: subprocess.CompletedProcess[str]) -> tuple[int, dict[str, str]]:
    assert result.returncode == 0, result.stderr
    body, _, code = result.stdout.rpartition("\n")
    return int(code), json.loads(body) if body.startswith("{") else {"text": body}


def test_server_client_curl(launch: Launch, origins: Callable[..., ThreadedOrigin]) -> None:
    origin = origins("app")
    server, control, port = start_server(launch)
    client = launch(
        *client_args(
            control,
            "--local-addr",
            f"{HOST}:{origin.port}",
            "--protocol",
            "http",
            "--tunnel-id",
            "app.localhost",
        )
    )
    line = client.expect(r"^\s+(?P<public>http://\S+)\s+->\s+(?P<local>\S+)$")
    assert line["public"] == f"http://app.localhost:{port}"
    assert line["local"] == f"http://{HOST}:{origin.port}"
    code, echo = answer(curl(f"http://{HOST}:{port}/hello", "-H", "Host: app.localhost"))
    assert code == 200, echo
    assert echo == {
        "origin": "app",
        "path": "/hello",
        "host": "app.localhost",
        "forwarded_host": "app.localhost",
    }
    code, _ = answer(curl(f"http://{HOST}:{port}/", "-H", "Host: other.localhost"))
    assert code == 404
    code, health = answer(curl(f"http://{HOST}:{port}/health"))
    assert (code, health) == (200, {"text": "OK\n"})
    assert "Traceback" not in server.stderr + client.stderr


def test_tunnel_specs_path_routing_and_host_rewrite(
    launch: Launch, origins: Callable[..., ThreadedOrigin]
) -> None:
    web, api = origins("web"), origins("api")
    _, control, port = start_server(launch)
    client = launch(
        *client_args(
            control,
            "--host-header",
            "rewrite",
            "--tunnel",
            f"http:site.localhost={HOST}:{web.port}",
            "--tunnel",
            f"http:site.localhost/api={HOST}:{api.port}",
        )
    )
    client.expect(rf"^\s+http://site\.localhost:{port}\s+->")
    client.expect(rf"^\s+http://site\.localhost:{port}/api\s+->")
    resolve = ["--resolve", f"site.localhost:{port}:{HOST}"]
    base = f"http://site.localhost:{port}"
    code, echo = answer(curl(f"{base}/api/users", *resolve))
    assert (code, echo["origin"], echo["path"]) == (200, "api", "/api/users")
    assert echo["host"] == f"{HOST}:{api.port}"  # rewritten to the local address
    assert echo["forwarded_host"] == f"site.localhost:{port}"
    code, echo = answer(curl(f"{base}/apix", *resolve))
    assert (code, echo["origin"], echo["host"]) == (200, "web", f"{HOST}:{web.port}")


def test_local_https_with_a_private_ca(
    launch: Launch, origins: Callable[..., ThreadedOrigin], tmp_path: Path
) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(context)
    origin = origins("secure", context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    _, control, port = start_server(launch)
    client = launch(
        *client_args(
            control,
            "--local-addr",
            f"{HOST}:{origin.port}",
            "--tunnel-id",
            "secure.localhost",
            "--local-https",
            "--local-ca",
            str(ca_file),
        )
    )
    line = client.expect(r"^\s+(?P<public>http://\S+)\s+->\s+(?P<local>\S+)$")
    assert line["local"] == f"https://{HOST}:{origin.port}"
    code, echo = answer(curl(f"http://{HOST}:{port}/tls", "-H", "Host: secure.localhost"))
    assert (code, echo["origin"], echo["path"]) == (200, "secure", "/tls")


def test_grpc_to_an_https_origin(launch: Launch, tmp_path: Path) -> None:
    """``--local-https`` serves gRPC too: the client offers ALPN ``h2`` on an h2c visitor's
    origin connection (grpc-core refuses TLS without it)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc  # type: ignore[import-untyped]

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert = ca.issue_cert(HOST)
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    unary = grpc.unary_unary_rpc_method_handler(lambda request, _: b"tls:" + request)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.E", {"U": unary}),))
    key_and_chain = (cert.private_key_pem.bytes(), cert.cert_chain_pems[0].bytes())
    grpc_port = server.add_secure_port(f"{HOST}:0", grpc.ssl_server_credentials([key_and_chain]))
    server.start()
    try:
        _, control, port = start_server(launch)
        client = launch(
            *client_args(
                control,
                *("--local-addr", f"{HOST}:{grpc_port}", "--tunnel-id", "rpc.localhost"),
                *("--local-https", "--local-ca", str(ca_file)),
            )
        )
        client.expect(r"^ferrotunnel client connected$")
        options = [("grpc.default_authority", "rpc.localhost")]
        with grpc.insecure_channel(f"{HOST}:{port}", options=options) as channel:
            assert channel.unary_unary("/t.E/U")(b"hi", timeout=10) == b"tls:hi"
    finally:
        server.stop(grace=None).wait(5)
