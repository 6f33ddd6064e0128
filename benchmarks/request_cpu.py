"""CPU per HTTP request of the tunnel processes, per configuration of plugins or observability.

On a shared two-core machine req/s swings by ±20 % from one run to the next; the CPU time a
process spends per request it serves is much steadier. For each configuration this starts a
``ferrotunnel server`` and ``client`` (``$FERROTUNNEL_BIN``) in front of a small keep-alive
origin, drives them with ``wrk -t2 -c50`` for ``--seconds``, and reads the processes' CPU time
(``/proc/PID/stat``) before and after. Configurations are interleaved, ``--rounds`` times, and
the median reported. ``--suite observability`` (the dashboard's capture, metrics and tracing;
spans go over OTLP/HTTP to a sink in this process) or ``--suite plugins`` (the built-ins of
Issue 5, one at a time and all five, each from a server configuration file).

    uv run python benchmarks/request_cpu.py --suite observability --seconds 8 --rounds 3
    uv run python benchmarks/request_cpu.py --suite plugins --seconds 8 --rounds 3

Every address is 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import os
import re
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
FT = os.environ.get("FERROTUNNEL_BIN", str(ROOT / ".venv" / "bin" / "ferrotunnel"))
BODY = b"x" * 1024
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)
TICKS = os.sysconf("SC_CLK_TCK")
RATIO_10 = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}


@dataclass
class Config:
    name: str
    flags: tuple[str, ...] = ()  # for both processes
    env: dict[str, str] = field(default_factory=dict)
    server_toml: str = ""  # a server configuration file's text, if any
    client_flags: tuple[str, ...] = ()  # for the client only
    binary: str = ""  # the ferrotunnel executable, if not FT (another build, compared)

    def commands(
        self, tmp: Path, control: int, public: int, origin: int
    ) -> tuple[list[str], list[str]]:
        """The server's and the client's command lines (the server's TOML written in ``tmp``);
        without ``--dashboard-port``, the client runs no dashboard."""
        server_flags = list(self.flags)
        if self.server_toml:
            path = tmp / "server.toml"
            path.write_text(self.server_toml.replace("{tmp}", str(tmp)))
            server_flags += ["--config", str(path)]
        client_flags = [*self.flags, *self.client_flags]
        if "--dashboard-port" not in client_flags:
            client_flags.append("--no-dashboard")
        ft = self.binary or FT
        server = [ft, "server", "--token", "t", "--bind", f"{HOST}:{control}",
                  "--http-bind", f"{HOST}:{public}", *server_flags]  # fmt: skip
        client = [ft, "client", "--server", f"{HOST}:{control}", "--token", "t",
                  "--local-addr", f"{HOST}:{origin}", "--tunnel-id", "bench.localhost",
                  *client_flags]  # fmt: skip
        return server, client


#: the client's dashboard on an ephemeral port, capturing every exchange
CAPTURE = ("--dashboard-port", "0")


#: the five built-ins of ``plugin_tunnels.py``, each table on its own
PLUGIN_TABLES = {
    "ip-filter": '[ip_filter.tunnels."*"]\nallow = ["127.0.0.0/8"]\n',
    "rate-limit": "[rate_limit]\nper_ip = { rate = 1000000.0, burst = 1000000 }\n",
    "headers": '[headers.tunnels."*"]\nresponse_set = { "X-Served-By" = "ferrotunnel" }\n',
    "circuit-breaker": '[circuit_breaker.tunnels."*"]\nfailure_threshold = 5\n',
    "access-log": '[access_log]\npath = "{tmp}/access.jsonl"\n',
}


def noop_plugins_path() -> str:
    """A ``PYTHONPATH`` under which plugin discovery finds ``noop_plugins.py`` (a made-up
    distribution's metadata, in a new temporary folder, and this folder)."""
    folder = Path(tempfile.mkdtemp(prefix="ft-noop-plugins-"))
    info = folder / "ferrotunnel_noop_bench-0.dist-info"
    info.mkdir()
    metadata = "Metadata-Version: 2.1\nName: ferrotunnel-noop-bench\nVersion: 0\n"
    (info / "METADATA").write_text(metadata)
    (info / "entry_points.txt").write_text("[ferrotunnel]\nnoop-five = noop_plugins\n")
    return os.pathsep.join([str(folder), str(Path(__file__).resolve().parent)])


def plugin_configs() -> list[Config]:
    one_each = [Config(name, server_toml=toml) for name, toml in PLUGIN_TABLES.items()]
    return [
        Config("off"),
        *one_each,
        Config("all five", server_toml="\n".join(PLUGIN_TABLES.values())),
        # the framework's floor: five middlewares shaped like the five, doing nothing
        Config("five no-ops", env={"PYTHONPATH": noop_plugins_path()}),
    ]


def observability_configs(sink: str) -> list[Config]:
    metrics = ("--metrics", "--metrics-bind", f"{HOST}:0")
    tracing = ("--otlp-endpoint", sink)
    return [
        Config("off"),
        Config("capture", client_flags=CAPTURE),
        Config("metrics", metrics),
        Config("tracing, nothing sampled", tracing, {"OTEL_TRACES_SAMPLER": "always_off"}),
        Config("tracing, 10 % sampled", tracing, RATIO_10),
        Config("tracing, all sampled", tracing),
        Config("capture + metrics + tracing, 10 %", metrics + tracing, RATIO_10, "", CAPTURE),
        Config("capture + metrics + tracing, all", metrics + tracing, {}, "", CAPTURE),
    ]


def add_plan_arguments(parser: argparse.ArgumentParser, default_suite: str) -> None:
    """``--suite`` and ``--only``, which every script measuring these configurations takes."""
    parser.add_argument("--suite", choices=("observability", "plugins"), default=default_suite)
    parser.add_argument("--only", nargs="*", help="configurations to run (default: all)")


def plan_of(args: argparse.Namespace) -> list[Config]:
    """The configurations ``--suite``/``--only`` ask for, ``off`` (the baseline) first; the
    observability suite gets its OTLP sink started here."""
    plan = (
        observability_configs(start_sink()) if args.suite == "observability" else plugin_configs()
    )
    if args.only:
        plan = [c for c in plan if c.name in args.only or c.name == "off"]
    return plan


class _Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def start_sink() -> str:
    server = http.server.ThreadingHTTPServer((HOST, 0), _Sink)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://{HOST}:{server.server_address[1]}/v1/traces"


def start_origin() -> int:
    """A keep-alive origin answering every request head with 1 KiB, in its own thread."""
    ready = threading.Event()
    port: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(RESPONSE)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, HOST, 0)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        await server.serve_forever()

    threading.Thread(target=asyncio.run, args=(main(),), daemon=True).start()
    ready.wait(10)
    return port[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def wait_http(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=1) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: bench.localhost\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError("the tunnel did not come up")


def wrk(port: int, seconds: float) -> tuple[int, float]:
    """``wrk -t2 -c50`` (the harness's load) for ``seconds``: requests done, and in how long."""
    out = subprocess.run(
        ["wrk", "-t2", "-c50", f"-d{seconds:g}s", "-H", "Host: bench.localhost",
         f"http://{HOST}:{port}/"],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    ).stdout  # fmt: skip
    match = re.search(r"(\d+) requests in ([\d.]+)s", out)
    assert match, out
    return int(match[1]), float(match[2])


def measure(config: Config, origin: int, seconds: float, tmp: Path) -> tuple[float, float, float]:
    """req/s, server µs of CPU per request, client µs of CPU per request."""
    control, public = free_port(), free_port()
    env = {**os.environ, **config.env}
    server_cmd, client_cmd = config.commands(tmp, control, public, origin)
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    server = subprocess.Popen(server_cmd, **quiet)
    client = None
    try:
        time.sleep(1.0)
        client = subprocess.Popen(client_cmd, **quiet)
        wait_http(public)
        before = cpu_seconds(server.pid), cpu_seconds(client.pid)
        requests, took = wrk(public, seconds)
        after = cpu_seconds(server.pid), cpu_seconds(client.pid)
    finally:
        for proc in (client, server):
            if proc is not None:
                proc.terminate()
                proc.wait(10)
    return (
        requests / took,
        (after[0] - before[0]) / requests * 1e6,
        (after[1] - before[1]) / requests * 1e6,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    add_plan_arguments(parser, "observability")
    args = parser.parse_args()
    origin = start_origin()
    plan = plan_of(args)
    tmp = Path(tempfile.mkdtemp(prefix="ft-request-cpu-"))
    results: dict[str, list[tuple[float, float, float]]] = {c.name: [] for c in plan}
    for round_ in range(args.rounds):
        for config in plan:
            results[config.name].append(measure(config, origin, args.seconds, tmp))
            rps, server_us, client_us = results[config.name][-1]
            print(
                f"round {round_ + 1} {config.name}: {rps:,.0f} req/s, "
                f"server {server_us:.1f} µs/req, client {client_us:.1f} µs/req",
                flush=True,
            )
    base = [statistics.median(v) for v in zip(*results["off"], strict=True)]
    print(f"\nmedians of {args.rounds} rounds, wrk -t2 -c50 -d{args.seconds:g}s\n")
    print("| configuration | req/s | vs off | server CPU µs/req | client CPU µs/req |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in results.items():
        rps, server_us, client_us = (statistics.median(v) for v in zip(*runs, strict=True))
        change = "" if name == "off" else f"{rps / base[0] - 1:+.0%}"
        print(f"| {name} | {rps:,.0f} | {change} | {server_us:.1f} | {client_us:.1f} |")


if __name__ == "__main__":
    main()
