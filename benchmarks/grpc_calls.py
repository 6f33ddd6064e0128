"""gRPC unary calls per second through the tunnel, and the server's CPU per call, by plugins.

An HTTP/2 (h2c) connection is passed through undecoded; with middlewares that want records
(``on_complete``: the access log, the circuit breaker, metrics) the ingress also follows its
frames (``ferrotunnel.http.h2watch``) to give each call its record. This measures what that
costs: a gRPC server (grpcio, a payload echo), ``ferrotunnel server`` with a configuration,
``ferrotunnel client``, and one grpcio channel making unary calls one after another.

Configurations: ``off`` (no plugin table), ``ip-filter`` (an ``on_request`` middleware only:
no records, no watch), ``circuit-breaker`` and ``access-log`` (records: the watch follows every
frame), and ``dashboard``: the client's dashboard capturing every call
(``ferrotunnel.observability.http2``; measure it with ``--side client``). Rounds visit every
configuration in turn (ABBA order), so the machine's drift cancels in each round's ratios;
the summary gives medians.

    uv run python benchmarks/grpc_calls.py --rounds 4 --calls 3000
    uv run python benchmarks/grpc_calls.py --side client --only off dashboard
    uv run python benchmarks/grpc_calls.py --only off --compare OTHER/.venv/bin/ferrotunnel

``--compare BIN`` adds ``off @ BIN``: the same as ``off`` with another build of ferrotunnel
(a worktree of an older commit, say), in the same rounds.

Every address is 127.0.0.1; every process is stopped; every wait is bounded.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc  # type: ignore[import-untyped]

HOST = "127.0.0.1"
FT = os.environ.get("FERROTUNNEL_BIN", str(Path(sys.executable).parent / "ferrotunnel"))

#: name -> (the server's TOML, the client's dashboard flags)
CONFIGS = {
    "off": ("", ["--no-dashboard"]),
    "ip-filter": ('[ip_filter.tunnels."*"]\nallow = ["127.0.0.0/8"]\n', ["--no-dashboard"]),
    "circuit-breaker": (
        '[circuit_breaker.tunnels."*"]\nfailure_threshold = 5\n',
        ["--no-dashboard"],
    ),
    "access-log": ('[access_log]\npath = "{tmp}/access.jsonl"\n', ["--no-dashboard"]),
    "dashboard": ("", ["--dashboard-port", "0"]),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def read_until(process: subprocess.Popen[str], marker: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if marker in line:
            return
        if not line and process.poll() is not None:
            break
    raise RuntimeError(f"{process.args[1]} did not print {marker!r}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    config: tuple[str, list[str], str], grpc_port: int, calls: int, size: int, side: str
) -> tuple[float, float]:
    """Calls per second, and ``side``'s CPU µs per call, for one configuration."""
    tmp = tempfile.mkdtemp(prefix="ft-grpc-")
    path = Path(tmp, "server.toml")
    server_toml, dashboard, ft = config
    path.write_text(server_toml.replace("{tmp}", tmp))
    control, public = free_port(), free_port()
    server_args = ["server", "--token", "t", "--bind", f"{HOST}:{control}", "--http-bind",
                   f"{HOST}:{public}", "--config", str(path)]  # fmt: skip
    client_args = ["client", "--server", f"{HOST}:{control}", "--token", "t", *dashboard,
                   "--local-addr", f"{HOST}:{grpc_port}", "--tunnel-id", "g.localhost"]  # fmt: skip
    server = subprocess.Popen(
        [ft, *server_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    client = subprocess.Popen(
        [ft, *client_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        read_until(server, "ready")
        read_until(client, "connected")
        options = [("grpc.default_authority", "g.localhost")]
        with grpc.insecure_channel(f"{HOST}:{public}", options=options) as channel:
            call = channel.unary_unary("/bench.Echo/Call")
            payload = b"x" * size
            for _ in range(200):  # warm-up: connection, tables, caches
                call(payload, timeout=10)
            measured = (server if side == "server" else client).pid
            cpu = cpu_seconds(measured)
            started = time.perf_counter()
            for _ in range(calls):
                call(payload, timeout=10)
            elapsed = time.perf_counter() - started
            cpu = cpu_seconds(measured) - cpu
        return calls / elapsed, cpu / calls * 1e6
    finally:
        for process in (client, server):
            process.terminate()
        for process in (client, server):
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def echo_server() -> tuple[grpc.Server, int]:
    """A started grpcio server whose ``/bench.Echo/Call`` answers with the request; its port."""
    echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Echo", {"Call": echo}),)
    )
    port: int = server.add_insecure_port(f"{HOST}:0")
    server.start()
    return server, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--size", type=int, default=100, help="payload bytes each way")
    parser.add_argument("--side", choices=("server", "client"), default="server")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), help="these configurations")
    parser.add_argument("--compare", metavar="BIN", help="also 'off' with this ferrotunnel")
    args = parser.parse_args()
    configs = {name: (*config, FT) for name, config in CONFIGS.items()}
    names = args.only or list(CONFIGS)
    if names[0] != "off":
        names.insert(0, "off")
    if args.compare:
        configs[f"off @ {args.compare}"] = (*CONFIGS["off"], args.compare)
        names.append(f"off @ {args.compare}")
    server, grpc_port = echo_server()
    rates: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    try:
        for round_number in range(args.rounds):
            order = names if round_number % 2 == 0 else names[::-1]
            this_round = {}
            for name in order:
                rate, cpu = measure(configs[name], grpc_port, args.calls, args.size, args.side)
                this_round[name] = rate
                rates[name].append(rate)
                cpus[name].append(cpu)
                print(f"round {round_number + 1}: {name}: {rate:,.0f} calls/s, "
                      f"{args.side} {cpu:.0f} CPU-µs/call", flush=True)  # fmt: skip
            for name in names:
                ratios[name].append(this_round[name] / this_round["off"] - 1)
    finally:
        server.stop(None)
    print(f"\ngRPC unary calls, one channel, one call at a time, {args.size}-byte payloads, "
          f"{args.calls} calls x {args.rounds} rounds (medians)\n")  # fmt: skip
    print(f"| configuration | calls/s | vs off (per round) | {args.side} CPU µs / call |")
    print("|---|---:|---:|---:|")
    for name in names:
        change = "" if name == "off" else f"{statistics.median(ratios[name]):+.1%}"
        print(f"| {name} | {statistics.median(rates[name]):,.0f} | {change} | "
              f"{statistics.median(cpus[name]):.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
