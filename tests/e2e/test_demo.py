"""``ferrotunnel demo`` as a user runs it: start, curl the printed URL, see it in the printed
dashboard, Ctrl-C."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

from .conftest import Launch
from .helpers import CliProcess, run_cli

pytestmark = pytest.mark.timeout(60)


def test_demo_serves_curl_and_stops_on_ctrl_c(launch: Launch) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("the curl command is not installed")
    demo = launch("demo")
    dashboard = demo.expect(r"^\s+dashboard \(inspect, replay\)\s+(?P<url>http://\S+)$")
    demo.expect(r"self-check through the tunnel\s+OK")
    url = demo.expect(r"^\s+curl (?P<url>http://\S+:\d+/hello)$").group("url")
    demo.expect(r"^Press Ctrl-C to stop\.$")
    result = subprocess.run(
        [curl, "--silent", "--show-error", "--max-time", "5", url],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Hello from behind the tunnel" in result.stdout, result.stdout
    assert "GET /hello HTTP/1.1" in result.stdout
    # the dashboard lists it (and the demo's own self-check before it)
    listed = subprocess.run(
        [curl, "--silent", "--max-time", "5", dashboard.group("url") + "/api/v1/requests"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    paths = [item["path"] for item in json.loads(listed.stdout)["requests"]]
    assert paths == ["/hello", "/self-check"], paths  # newest first
    signalled = time.monotonic()
    demo.signal(signal.SIGINT)
    assert demo.wait_exit(timeout=5.0) == 0, demo.describe()
    assert time.monotonic() - signalled < 5.0
    assert demo.stdout.splitlines()[-1].startswith("Stopped:"), demo.describe()
    assert "Traceback" not in demo.stderr, demo.describe()


@pytest.mark.parametrize("installed", [True, False], ids=["plugins-off", "not-installed"])
def test_demo_without_the_dashboard_says_why(installed: bool) -> None:
    """No dashboard line would leave the README's "and the dashboard whose URL it prints"
    unexplained: the demo says why there is none (here: ``--no-plugins``, or, in a process
    where ``ferrotunnel.observability`` cannot be imported, not installed)."""
    hide = "" if installed else "sys.modules['ferrotunnel.observability'] = None; "
    code = f"import sys; {hide}from ferrotunnel.cli.main import main; sys.exit(main())"
    demo = CliProcess(["-c", code, "--no-plugins", "demo"], exe=sys.executable)
    try:
        line = demo.expect(r"^\s+dashboard\s+(?P<why>.+)$").group("why")
        demo.expect(r"self-check through the tunnel\s+OK")
        demo.expect(r"^Press Ctrl-C to stop\.$")
        if installed:
            assert (
                line == "off (the dashboard plugin is not loaded: --no-plugins or --block-plugin)"
            )
        else:
            assert line == "not installed (it comes with ferrotunnel-observability)"
        demo.signal(signal.SIGINT)
        assert demo.wait_exit(timeout=5.0) == 0, demo.describe()
    finally:
        demo.close()


def test_demo_on_trio_says_what_it_needs() -> None:
    """``--loop trio demo``: the demo's HTTP ingress runs on asyncio; the error says so, in
    one line (it said "Exceptions from Trio nursery (1 sub-exception)")."""
    result = run_cli(["--loop", "trio", "demo"], timeout=20)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        "ferrotunnel: error: the HTTP ingress needs the asyncio backend (or uvloop)"
    ], result.stderr
