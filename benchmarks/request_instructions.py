"""Instructions per HTTP request of the tunnel's server or client, per configuration.

CPU time per request still moves by ±10 % from run to run on a shared two-core machine, and
req/s by ±20 %. The number of instructions a process executes per request does not: this
runs one side under ``valgrind --tool=callgrind`` (collection switched on only while wrk
drives the tunnel), counts the requests wrk completed, and divides. Two runs of the same
configuration agree to within about 1 %, so a change of a few hundred instructions per
request — a function call or two — is visible.

The configurations are those of ``request_cpu.py`` (``--suite plugins`` or
``observability``). Under valgrind the measured side runs some 50 times slower, so every
event-loop iteration finds many requests waiting: the counts describe the fully batched
regime (user space only — system calls and the kernel's work are not counted). Caches keyed
by wall-clock time (the access log's per-millisecond text) rarely hit at that speed.

    uv run python benchmarks/request_instructions.py --suite plugins --side server
    uv run python benchmarks/request_instructions.py --suite observability --only off metrics

Every address is 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from request_cpu import (  # a sibling script, not a package
    FT,
    HOST,
    Config,
    add_plan_arguments,
    free_port,
    plan_of,
    start_origin,
    wait_http,
)

PYTHON = str(Path(FT).parent / "python")


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"nothing listens on {HOST}:{port}")


def total_instructions(out: Path) -> int:
    """The ``totals:`` line of a callgrind dump (its ``summary:`` line may say 0)."""
    lines = out.read_text(errors="replace").splitlines()
    return max((int(line.split()[1]) for line in lines if line.startswith("totals:")), default=0)


def measure(config: Config, side: str, origin: int, seconds: float, tmp: Path) -> tuple[int, float]:
    """(requests, instructions per request) of ``side`` for one configuration."""
    control, public = free_port(), free_port()
    env = {**os.environ, **config.env}
    server_cmd, client_cmd = config.commands(tmp, control, public, origin)
    out = tmp / f"callgrind-{side}.out"
    out.unlink(missing_ok=True)
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={out}", PYTHON]  # fmt: skip
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    server = client = None
    try:
        server = subprocess.Popen(
            [*valgrind, *server_cmd] if side == "server" else server_cmd, **quiet
        )
        wait_port(control, 120)
        client = subprocess.Popen(
            [*valgrind, *client_cmd] if side == "client" else client_cmd, **quiet
        )
        wait_http(public, timeout=120)
        measured = server if side == "server" else client
        wrk = ["wrk", "-t1", "-c50", "-H", "Host: bench.localhost", f"http://{HOST}:{public}/"]
        subprocess.run([*wrk, "-d2s"], capture_output=True, timeout=60)  # warm-up
        pid = str(measured.pid)
        subprocess.run(["callgrind_control", "-i", "on", pid], capture_output=True, check=True)
        report = subprocess.run(
            [*wrk, f"-d{seconds:g}s"], capture_output=True, text=True, timeout=seconds + 60
        ).stdout
        subprocess.run(["callgrind_control", "-i", "off", pid], capture_output=True)
        subprocess.run(["callgrind_control", "-d", pid], capture_output=True, check=True)
    finally:
        for proc in (client, server):
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    match = re.search(r"(\d+) requests in", report)
    assert match, report
    requests = int(match[1])
    dumps = sorted(tmp.glob(f"callgrind-{side}.out*"))
    return requests, max(map(total_instructions, dumps)) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", choices=("server", "client"), default="server")
    parser.add_argument("--seconds", type=float, default=20.0)
    add_plan_arguments(parser, "plugins")
    parser.add_argument(
        "--keep", type=Path, help="copy each callgrind dump here (read with callgrind_annotate)"
    )
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (Debian: valgrind, wrk)")
    origin = start_origin()
    plan = plan_of(args)
    rows = []
    for config in plan:
        with tempfile.TemporaryDirectory(prefix="ft-instructions-") as tmp:
            requests, per_request = measure(config, args.side, origin, args.seconds, Path(tmp))
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                name = re.sub(r"[^a-z0-9]+", "-", config.name.lower()).strip("-")
                for dump in Path(tmp).glob("callgrind-*.out*"):
                    shutil.copy(dump, args.keep / f"{name}-{dump.name}")
        rows.append((config.name, requests, per_request))
        print(f"{config.name}: {per_request / 1000:,.1f} k instructions per request "
              f"({requests:,} requests)", flush=True)  # fmt: skip
    base = rows[0][2]
    print(
        f"\n{args.side}, instructions per request (callgrind), wrk -t1 -c50 -d{args.seconds:g}s\n"
    )
    print("| configuration | k instructions / request | vs off |")
    print("|---|---:|---:|")
    for name, _, per_request in rows:
        change = "" if name == "off" else f"{per_request / base - 1:+.1%}"
        print(f"| {name} | {per_request / 1000:,.1f} | {change} |")


if __name__ == "__main__":
    main()
