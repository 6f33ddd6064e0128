"""A third-party plugin, installed the way users install one, works end to end.

The project's distributions and ``examples/ferrotunnel-hello-plugin`` are built into wheels and
installed into a fresh virtual environment. There, ``ferrotunnel plugins list`` must show the
plugin with its distribution, its subcommand must run, and its response header must reach a
visitor through a real server and client started from that environment.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import venv
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.helpers import CliProcess, child_env

ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTIONS = sorted(p for p in ROOT.glob("ferrotunnel-*") if (p / "pyproject.toml").exists())
EXAMPLE = ROOT / "examples" / "ferrotunnel-hello-plugin"

pytestmark = pytest.mark.timeout(240)


def _run(*args: str | Path, timeout: float = 180) -> str:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with ferrotunnel and ferrotunnel-hello installed from wheels."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is needed to build the wheels")
    work = tmp_path_factory.mktemp("third-party")
    wheels = work / "wheels"
    for project in [*DISTRIBUTIONS, EXAMPLE]:
        _run(uv, "build", "--wheel", "--quiet", "--out-dir", wheels, project)
    env = work / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    _run(uv, "pip", "install", "--quiet", "--python", python, *sorted(wheels.glob("*.whl")))
    return env


class _Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"origin says hi\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def origin() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_plugins_list_finds_the_installed_plugin(plugin_env: Path) -> None:
    out = _run(plugin_env / "bin" / "ferrotunnel", "plugins", "list")
    line = next(line for line in out.splitlines() if line.startswith("hello "))
    assert "ferrotunnel-hello" in line
    assert "0.1.0" in line
    assert "enabled" in line
    assert "http_middlewares" in line


def test_the_plugin_adds_its_subcommand(plugin_env: Path, tmp_path: Path) -> None:
    config = tmp_path / "hello.toml"
    config.write_text('[hello]\ngreeting = "from a test"\n')
    out = _run(plugin_env / "bin" / "ferrotunnel", "hello", "--config", config)
    assert out.strip() == "X-Hello: from a test"


def test_the_plugin_header_reaches_a_visitor_through_a_tunnel(
    plugin_env: Path, tmp_path: Path, origin: int
) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("the curl command is not installed")
    exe = str(plugin_env / "bin" / "ferrotunnel")
    config = tmp_path / "server.toml"
    config.write_text('[hello]\nheader = "X-Greeting"\ngreeting = "hi there"\n')
    server = CliProcess(
        [
            "server",
            "--token",
            "t",
            "--bind",
            "127.0.0.1:0",
            "--http-bind",
            "127.0.0.1:0",
            "--config",
            str(config),
        ],
        env=child_env(),
        exe=exe,
    )
    try:
        control = server.expect(r"control plane\s+(?P<a>\S+)").group("a")
        http = server.expect(r"HTTP ingress\s+(?P<a>\S+)").group("a")
        server.expect(r"plugins\s+.*hello")
        client = CliProcess(
            [
                "client",
                "--server",
                control,
                "--token",
                "t",
                "--local-addr",
                f"127.0.0.1:{origin}",
                "--protocol",
                "http",
                "--tunnel-id",
                "hello.localhost",
                "--no-dashboard",
            ],
            env=child_env(),
            exe=exe,
        )
        try:
            client.expect(r"http://hello\.localhost")
            result = subprocess.run(
                [
                    curl,
                    "-sS",
                    "-i",
                    "--max-time",
                    "10",
                    "-H",
                    "Host: hello.localhost",
                    f"http://{http}/",
                ],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
        finally:
            client.close()
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("HTTP/1.1 200")
    assert "X-Greeting: hi there" in result.stdout


def _guide_tests() -> str:
    """The test recipes of docs/plugin-development.md's "Testing a plugin", as one module."""
    text = (ROOT / "docs" / "plugin-development.md").read_text()
    section = text.split("## Testing a plugin", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    tests = [block for block in blocks if "def test_" in block]
    assert len(tests) >= 2, "the guide's test recipes moved"
    return "\n\n".join(tests)


def test_the_guides_test_recipes_pass_against_the_installed_plugin(
    plugin_env: Path, tmp_path: Path
) -> None:
    """What a plugin author copies from the guide runs as written, with only ferrotunnel,
    their plugin, pytest and httpx installed; ``plugin_host`` names the plugin after its entry
    point there too."""
    uv = shutil.which("uv")
    assert uv is not None  # plugin_env needed it
    python = plugin_env / "bin" / "python"
    _run(uv, "pip", "install", "--quiet", "--python", python, "pytest", "httpx")
    test_file = tmp_path / "test_guide.py"
    test_file.write_text(_guide_tests())
    out = _run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file, timeout=120)
    assert re.search(r"\b2 passed\b", out), out
    info = _run(
        python,
        "-c",
        "import ferrotunnel_hello; from ferrotunnel.core.testing import plugin_host; "
        "i = plugin_host(ferrotunnel_hello).infos[0]; print(i.name, i.distribution, i.version)",
    )
    assert info.split() == ["hello", "ferrotunnel-hello", "0.1.0"]


def test_the_workspace_python_is_not_the_plugin_env(plugin_env: Path) -> None:
    """Guard: the checks above ran the fresh environment's own ``ferrotunnel``."""
    assert not Path(sys.executable).is_relative_to(plugin_env)
    assert (plugin_env / "bin" / "ferrotunnel").exists()
