"""The dashboard as a person uses it: real ``ferrotunnel`` processes, curl, and headless
Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by selenium; nothing downloads
a browser).

A request made with curl through the tunnel appears in the open page without a reload; the
person opens it, clicks Replay and sees the replayed row. ``FERROTUNNEL_UPDATE_SCREENSHOT=1``
writes the final screen to ``docs/dashboard.png``.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..e2e.conftest import Launch
from ..e2e.helpers import CONTROL_RE, HOST, CliProcess, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CURL = Path("/usr/bin/curl")
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "dashboard-e2e-token"
APP = "app.localhost"
HTTP_INGRESS_RE = r"^\s+HTTP ingress\s+(?P<host>\S+):(?P<port>\d+)$"
DASHBOARD_RE = r"^\s+dashboard: (?P<url>http://\S+)$"


class _Origin(http.server.BaseHTTPRequestHandler):
    """Answers JSON describing the request; ``/missing`` is a 404."""

    protocol_version = "HTTP/1.1"
    calls = 0

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        type(self).calls += 1
        status = 404 if self.path.startswith("/missing") else 200
        payload = json.dumps(
            {"path": self.path, "method": self.command, "received": len(body), "call": self.calls}
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def origin() -> Iterator[int]:
    _Origin.calls = 0
    server = http.server.ThreadingHTTPServer((HOST, 0), _Origin)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join(5)


def tunnel(launch: Launch, origin: int, *extra: str) -> tuple[CliProcess, int]:
    """A server and a client exposing ``origin`` as http://app.localhost; returns the client
    and the public HTTP port."""
    server = launch("server", "--token", TOKEN, "--bind", f"{HOST}:0", "--http-bind", f"{HOST}:0")
    control = server.expect(CONTROL_RE)
    ingress = int(server.expect(HTTP_INGRESS_RE)["port"])
    server.expect(r"^Press Ctrl-C to stop\.$")
    client = launch(
        "client", "--server", f"{HOST}:{control['port']}", "--token", TOKEN,
        "--local-addr", f"{HOST}:{origin}", "--protocol", "http", "--tunnel-id", APP,
        *extra,
    )  # fmt: skip
    client.expect(r"^ferrotunnel client connected$")
    return client, ingress


def curl(port: int, path: str, *args: str) -> str:
    result = subprocess.run(
        [str(CURL), "-sS", "--max-time", "10", "-H", f"Host: {APP}", *args,
         f"http://{HOST}:{port}{path}"],
        capture_output=True, text=True, timeout=15, check=True,
    )  # fmt: skip
    return result.stdout


@pytest.mark.skipif(not CURL.exists(), reason="curl is not installed")
def test_the_cli_serves_the_dashboard(launch: Launch, origin: int) -> None:
    port = free_port()
    client, ingress = tunnel(launch, origin, "--dashboard-port", str(port))
    url = client.expect(DASHBOARD_RE)["url"]
    assert url == f"http://127.0.0.1:{port}"
    assert json.loads(curl(ingress, "/via-cli?x=1"))["path"] == "/via-cli?x=1"
    with urllib.request.urlopen(f"{url}/api/v1/requests", timeout=5) as response:
        rows = json.load(response)["requests"]
    assert [(r["target"], r["status"]) for r in rows] == [("/via-cli?x=1", 200)]


def test_no_dashboard_means_no_listener(launch: Launch, origin: int) -> None:
    port = free_port()
    client, _ = tunnel(launch, origin, "--dashboard-port", str(port), "--no-dashboard")
    client.expect(r"^Press Ctrl-C to stop\.$")
    assert "dashboard" not in client.stdout
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, port), timeout=2)


needs_chromium = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="Debian's chromium and chromium-driver are not installed "
    "(apt-get install chromium chromium-driver)",
)


def _open(driver: Any, url: str) -> Any:
    """Opens the dashboard at ``url`` and waits for its live feed; a 15 s waiter."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 15)
    driver.get(url)
    wait.until(ec.text_to_be_present_in_element((By.ID, "live"), "live"))
    return wait


def _click(wait: Any, locator: tuple[str, str]) -> None:
    """Clicks what ``locator`` finds, again if the list re-rendered it meanwhile (rows are
    redrawn as their exchanges progress)."""
    from selenium.common.exceptions import StaleElementReferenceException

    def clicked(driver: Any) -> bool:
        try:
            driver.find_element(*locator).click()
        except StaleElementReferenceException:
            return False
        return True

    wait.until(clicked)


def _chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Headless Chromium under selenium, with a profile of its own."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium must never fetch a driver or browser
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1366,800", f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@needs_chromium
@pytest.mark.skipif(not CURL.exists(), reason="curl is not installed")
@pytest.mark.timeout(90)
def test_a_person_sees_requests_live_and_replays_one(
    launch: Launch, origin: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    client, ingress = tunnel(launch, origin, "--dashboard-port", str(free_port()))
    url = client.expect(DASHBOARD_RE)["url"]
    driver = _chromium(tmp_path, monkeypatch)
    try:
        wait = _open(driver, url)
        driver.execute_script("window.__sameDocument = 'yes'")

        # a request through the tunnel appears without a reload
        curl(ingress, "/orders?id=42", "-X", "POST", "-H", "Content-Type: application/json",
             "--data", '{"item": "widget", "qty": 2}')  # fmt: skip
        # rows are re-rendered as their exchange progresses: find them anew each time
        row = (By.XPATH, "//table[@id='requests']//tr[td[contains(., '/orders?id=42')]]")
        wait.until(ec.text_to_be_present_in_element((By.XPATH, row[1] + "/td[5]"), "200"))
        assert driver.execute_script("return window.__sameDocument") == "yes"
        curl(ingress, "/missing/page")
        curl(ingress, "/api/status")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#requests tbody tr")) == 3)

        # open it: the detail shows the pretty-printed JSON body and the visitor
        driver.find_element(*row).click()
        detail = wait.until(ec.visibility_of_element_located((By.ID, "detail")))
        wait.until(lambda d: "/orders?id=42" in detail.text)
        assert '"item": "widget"' in detail.text
        assert "127.0.0.1" in detail.text

        # replay it: a replayed row appears, and its diff against the original is shown
        driver.find_element(By.ID, "replay").click()
        replayed = (By.CSS_SELECTOR, "#requests tbody tr.replay")
        wait.until(ec.text_to_be_present_in_element(replayed, "/orders?id=42"))
        assert len(driver.find_elements(By.CSS_SELECTOR, "#requests tbody tr")) == 4
        verdict = wait.until(ec.visibility_of_element_located((By.ID, "diff-verdict")))
        assert "differs" in verdict.text  # the origin counts its calls: the body changed
        assert _Origin.calls == 4  # three through the tunnel, one replay straight to it

        shot = tmp_path / "dashboard.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("FERROTUNNEL_UPDATE_SCREENSHOT") == "1":
            (ROOT / "docs" / "dashboard.png").write_bytes(shot.read_bytes())

        # the tunnels view shows the live status
        driver.find_element(By.ID, "tab-tunnels").click()
        card = (By.CSS_SELECTOR, f"[data-tunnel='{APP}']")
        wait.until(ec.text_to_be_present_in_element(card, "4 requests"))  # the replay counts
        assert "connected" in driver.find_element(*card).text
    finally:
        driver.quit()


@needs_chromium
@pytest.mark.timeout(90)
def test_a_person_sees_a_failed_grpc_call_and_its_trailers(
    launch: Launch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import grpc  # type: ignore[import-untyped]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    from ..http.test_grpc import SERVICE, _missing

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    handlers = {
        "Missing": grpc.unary_unary_rpc_method_handler(_missing),
        "Unary": grpc.unary_unary_rpc_method_handler(lambda request, _: b"echo:" + request),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port(f"{HOST}:0")
    server.start()
    client, ingress = tunnel(launch, port, "--dashboard-port", str(free_port()))
    url = client.expect(DASHBOARD_RE)["url"]
    driver = _chromium(tmp_path, monkeypatch)
    try:
        wait = _open(driver, url)
        options = [("grpc.default_authority", APP)]
        with (
            grpc.insecure_channel(f"{HOST}:{ingress}", options=options) as channel,
            pytest.raises(grpc.RpcError),
        ):
            channel.unary_unary(f"/{SERVICE}/Missing")(b"widget-7", timeout=10)
        path = f"/{SERVICE}/Missing"
        row = (By.XPATH, f"//table[@id='requests']//tr[td[contains(., '{path}')]]")
        wait.until(ec.text_to_be_present_in_element((By.XPATH, row[1] + "/td[5]"), "error"))
        _click(wait, row)
        detail = wait.until(ec.visibility_of_element_located((By.ID, "detail")))
        wait.until(lambda d: "grpc-status 5" in detail.text)
        assert "HTTP/2" in detail.text
        _click(wait, (By.CSS_SELECTOR, "[data-tab='response']"))
        # a failure answered at once ("trailers-only"): its status is in the header fields
        wait.until(lambda d: "grpc-message" in detail.text)
        _click(wait, (By.ID, "replay"))  # replayed over HTTP/2
        replayed = (By.CSS_SELECTOR, "#requests tbody tr.replay")
        wait.until(ec.text_to_be_present_in_element(replayed, path))

        # edited: the same binary message (kept as base64) to another method
        rows = "//table[@id='requests']//tr"
        original = f"{rows}[not(contains(@class, 'replay'))][td[contains(., '{path}')]]"
        _click(wait, (By.XPATH, original))
        _click(wait, (By.ID, "edit-replay"))
        assert driver.find_element(By.ID, "edit-base64").is_selected()
        edit_path = driver.find_element(By.ID, "edit-path")
        edit_path.clear()
        edit_path.send_keys(f"/{SERVICE}/Unary")
        driver.find_element(By.ID, "edit-send").click()
        unary = f"{rows}[contains(@class, 'replay')][td[contains(., '/{SERVICE}/Unary')]]"
        wait.until(ec.text_to_be_present_in_element((By.XPATH, unary + "/td[5]"), "200"))
        _click(wait, (By.XPATH, unary))
        _click(wait, (By.CSS_SELECTOR, "[data-tab='response']"))
        wait.until(lambda d: "echo:widget" in detail.text)  # the hex dump's text column
    finally:
        driver.quit()
        server.stop(grace=None).wait(5)
