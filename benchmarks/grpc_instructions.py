"""Instructions the tunnel's server executes per gRPC unary call, for one or more builds.

``grpc_calls.py`` gives calls/s and CPU time, which move by ±10 µs per call on a shared
two-core machine; this counts what the server executes (``valgrind --tool=callgrind``,
collection on only while the calls are made), which two runs repeat to within ~1 %. Each
argument is a ``ferrotunnel`` executable (this checkout's, a worktree of another commit's):
a grpcio echo server, that build's server under callgrind with no plugin, its client, and
one channel making unary calls one at a time.

    uv run python benchmarks/grpc_instructions.py .venv/bin/ferrotunnel \\
        /tmp/ft-before/.venv/bin/ferrotunnel

Every address is 127.0.0.1; every process is stopped; every wait is bounded.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grpc_calls import HOST, echo_server, free_port  # sibling scripts, not a package
from request_instructions import total_instructions, wait_port


def measure(ft: str, grpc_port: int, calls: int) -> float:
    """The server's instructions per call for the build ``ft``."""
    tmp = Path(tempfile.mkdtemp(prefix="ft-grpc-instr-"))
    dump = tmp / "callgrind.out"
    python = str(Path(ft).parent / "python")
    control, public = free_port(), free_port()
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={dump}", python]  # fmt: skip
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    server = subprocess.Popen(
        [*valgrind, ft, "server", "--token", "t", "--bind", f"{HOST}:{control}",
         "--http-bind", f"{HOST}:{public}"], **quiet,
    )  # fmt: skip
    client = None
    try:
        wait_port(control, 120)
        client = subprocess.Popen(
            [ft, "client", "--server", f"{HOST}:{control}", "--token", "t", "--no-dashboard",
             "--local-addr", f"{HOST}:{grpc_port}", "--tunnel-id", "g.localhost"], **quiet,
        )  # fmt: skip
        wait_port(public, 60)
        time.sleep(3)  # the tunnel registered
        options = [("grpc.default_authority", "g.localhost")]
        with grpc.insecure_channel(f"{HOST}:{public}", options=options) as channel:
            call = channel.unary_unary("/bench.Echo/Call")
            for _ in range(50):  # warm-up: the connection, its tables
                call(b"x" * 100, timeout=30)
            pid = str(server.pid)
            subprocess.run(["callgrind_control", "-i", "on", pid], capture_output=True, check=True)
            for _ in range(calls):
                call(b"x" * 100, timeout=30)
            subprocess.run(["callgrind_control", "-i", "off", pid], capture_output=True)
            subprocess.run(["callgrind_control", "-d", pid], capture_output=True, check=True)
    finally:
        for process in (client, server):
            if process is not None:
                process.terminate()
                process.wait(60)
    return max(map(total_instructions, tmp.glob("callgrind.out*"))) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("builds", nargs="+", metavar="FERROTUNNEL")
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    server, grpc_port = echo_server()
    try:
        print(f"| build | server k instructions / call ({args.calls} calls) |\n|---|---:|")
        for ft in args.builds:
            print(f"| {ft} | {measure(ft, grpc_port, args.calls) / 1000:.1f} |", flush=True)
    finally:
        server.stop(None)


if __name__ == "__main__":
    main()
