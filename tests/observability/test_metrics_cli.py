"""``--metrics`` through the real ``ferrotunnel`` processes: traffic with curl, scraped over
HTTP, parsed with prometheus_client's parser."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Launch
from tests.e2e.helpers import HOST, CliProcess, child_env, free_port
from tests.http.test_cli import ThreadedOrigin, answer, curl, start_server

from .observed import Samples, parse, value

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not Path("/usr/bin/curl").exists(), reason="curl is not installed"),
]

TOKEN = "cli-http-token"  # what tests.http.test_cli.start_server gives the server


@pytest.fixture
def origin() -> Iterator[ThreadedOrigin]:
    started = ThreadedOrigin("app")
    yield started
    started.stop()


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return parse(response.read().decode())


def scrape_until(port: int, name: str, expected: float, **labels: str) -> Samples:
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(port)
        if value(samples, name, **labels) == expected or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def test_server_and_client_metrics_flags(launch: Launch, origin: ThreadedOrigin) -> None:
    server_port, client_port = free_port(), free_port()
    server, control, ingress = start_server_with(launch, "--metrics-bind", f"{HOST}:{server_port}")
    server.expect_stderr(rf"metrics at http://{HOST}:{server_port}/metrics")
    # the client's switches come from the environment this time
    client = launch(
        "client", "--server", control, "--token", TOKEN, "--no-dashboard",
        "--local-addr", f"{HOST}:{origin.port}", "--tunnel-id", "app.localhost",
        env=child_env(FERROTUNNEL_METRICS="1", FERROTUNNEL_METRICS_BIND=f"{HOST}:{client_port}"),
    )  # fmt: skip
    client.expect(r"^\s+http://app\.localhost:\d+\s+->")
    client.expect_stderr(rf"metrics at http://{HOST}:{client_port}/metrics")

    url = f"http://{HOST}:{ingress}"
    for path in ("/a", "/b", "/c"):
        code, echo = answer(curl(url + path, "-H", "Host: app.localhost"))
        assert (code, echo["path"]) == (200, path)
    code, _ = answer(curl(url + "/", "-H", "Host: nobody.localhost"))
    assert code == 404  # no tunnel: not a tunnel's request

    name = "ferrotunnel_http_requests_total"
    samples = scrape_until(server_port, name, 3, tunnel="app.localhost", status_class="2xx")
    assert value(samples, name, tunnel="app.localhost", status_class="2xx") == 3
    assert value(samples, "ferrotunnel_sessions_active") == 1
    assert value(samples, "ferrotunnel_tunnels_active", kind="http") == 1
    assert value(samples, "ferrotunnel_streams_opened_total") == 3
    count = "ferrotunnel_http_request_duration_seconds_count"
    assert value(samples, count, tunnel="app.localhost") == 3
    assert (value(samples, "ferrotunnel_tunnel_bytes_out_total", tunnel="app.localhost") or 0) > 0

    client_samples = scrape(client_port)
    assert value(client_samples, "ferrotunnel_client_connected") == 1
    assert value(client_samples, "ferrotunnel_client_streams_opened_total") == 3
    assert value(client_samples, "ferrotunnel_client_reconnects_total") == 0
    assert "Traceback" not in server.stderr + client.stderr


def test_metrics_from_the_config_file(launch: Launch, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "server.toml"
    config.write_text(f'[metrics]\nenabled = true\nbind = "{HOST}:{port}"\n')
    server, _, _ = start_server_with(launch, "--config", str(config), metrics=False)
    server.expect_stderr(rf"metrics at http://{HOST}:{port}/metrics")
    assert value(scrape(port), "ferrotunnel_sessions_active") == 0


def test_metrics_are_off_by_default(launch: Launch) -> None:
    server, _, _ = start_server_with(launch, metrics=False)
    # loaded, but serving nothing (start-up is over once the server says it is ready)
    assert "metrics" in server.stdout.split("plugins", 1)[1]
    assert "metrics at" not in server.stderr


def test_a_bad_metrics_bind_is_a_configuration_error(launch: Launch) -> None:
    proc = launch(
        "server", "--token", TOKEN, "--bind", f"{HOST}:0", "--http-bind", f"{HOST}:0",
        "--metrics", "--metrics-bind", "nonsense",
    )  # fmt: skip
    assert proc.wait_exit(15) == 2
    assert "metrics" in proc.stderr


def start_server_with(
    launch: Launch, *extra: str, metrics: bool = True
) -> tuple[CliProcess, str, int]:
    """``tests.http.test_cli.start_server`` with more options (and ``--metrics``)."""
    flags = ("--metrics", *extra) if metrics else extra
    return start_server(lambda *args: launch(*args, *flags))


def test_on_trio_the_endpoint_is_refused_with_a_warning(launch: Launch) -> None:
    proc = launch(
        "--loop", "trio", "server", "--token", TOKEN, "--bind", f"{HOST}:0", "--metrics",
        "--metrics-bind", f"{HOST}:{free_port()}",
    )  # fmt: skip
    proc.expect_stderr(r"metrics: the endpoint needs the asyncio event loop")
    proc.expect(r"^Press Ctrl-C to stop\.$")


def test_the_flag_wins_over_the_file(launch: Launch, tmp_path: Path) -> None:
    in_file, on_flag = free_port(), free_port()
    config = tmp_path / "server.toml"
    config.write_text(f'[metrics]\nenabled = true\nbind = "{HOST}:{in_file}"\n')
    server, _, _ = start_server_with(
        launch, "--config", str(config), "--metrics-bind", f"{HOST}:{on_flag}", metrics=False
    )
    server.expect_stderr(rf"metrics at http://{HOST}:{on_flag}/metrics")
    assert value(scrape(on_flag), "ferrotunnel_sessions_active") == 0


@pytest.mark.parametrize("command", ["server", "client"])
def test_a_metrics_port_in_use_is_a_clean_error(launch: Launch, command: str) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        if command == "server":
            args = ["server", "--token", TOKEN, "--bind", f"{HOST}:0", "--http-bind", f"{HOST}:0"]
        else:
            _, control, _ = start_server_with(launch, metrics=False)
            args = ["client", "--server", control, "--token", TOKEN, "--no-dashboard"]
        proc = launch(*args, "--metrics", "--metrics-bind", f"{HOST}:{port}")
        assert proc.wait_exit(15) == 2, proc.describe()
    assert f"--metrics-bind {HOST}:{port}: cannot listen" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("given", ["file", "variable"])
def test_a_metrics_port_in_use_names_where_it_was_set(
    launch: Launch, tmp_path: Path, given: str
) -> None:
    """Not ``--metrics-bind`` when the address came from ``[metrics] bind`` (or a variable)."""
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["server", "--token", TOKEN, "--bind", f"{HOST}:0", "--http-bind", f"{HOST}:0"]
        config = tmp_path / "server.toml"
        config.write_text(f'[metrics]\nenabled = true\nbind = "{HOST}:{port}"\n')
        env = child_env()
        if given == "variable":
            config.write_text("[metrics]\nenabled = true\n")
            env = child_env(FERROTUNNEL_METRICS_BIND=f"{HOST}:{port}")
        proc = launch(*args, "--config", str(config), env=env)
        assert proc.wait_exit(15) == 2, proc.describe()
    where = f"{config}:3: [metrics] bind" if given == "file" else "FERROTUNNEL_METRICS_BIND"
    assert f"ferrotunnel: error: {where} {HOST}:{port}: cannot listen" in proc.stderr
    assert "Traceback" not in proc.stderr
