"""Python bytecodes per HTTP request of the tunnel's server or client, by function.

``request_instructions.py`` says how much more a configuration costs; this says where, in
the terms the code is written in. The measured process gets a ``sitecustomize`` that, on
SIGUSR1, traces every bytecode its main thread runs (``sys.settrace`` with
``f_trace_opcodes``) and counts them by function, and on SIGUSR2 stops and writes the counts.
wrk drives the tunnel between the two signals, and the counts are divided by the requests it
completed; the configuration ``off`` is subtracted, so each row is what a configuration
adds. Tracing makes the process some 20 times slower, which batches more requests into each
event-loop iteration (as under callgrind), and threads other than the main one (the span
exporter's) are not counted.

    uv run python benchmarks/request_opcodes.py --suite observability --side client --only capture
    uv run python benchmarks/request_opcodes.py --suite plugins --only "all five"

Every address is 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from request_cpu import (  # a sibling script, not a package
    HOST,
    Config,
    add_plan_arguments,
    free_port,
    plan_of,
    start_origin,
    wait_http,
)

SITECUSTOMIZE = """
import collections, json, os, signal, sys

_counts = collections.Counter()


def _trace(frame, event, arg):
    frame.f_trace_opcodes = True
    if event == "opcode":
        code = frame.f_code
        _counts[code.co_filename.rsplit("/", 1)[-1] + ":" + code.co_name] += 1
    return _trace


def _start(*_):
    sys.settrace(_trace)


def _stop(*_):
    sys.settrace(None)
    with open(os.environ["FT_OPCODES_OUT"], "w") as out:
        json.dump(_counts, out)


signal.signal(signal.SIGUSR1, _start)
signal.signal(signal.SIGUSR2, _stop)
"""


def measure(config: Config, side: str, origin: int, seconds: float, tmp: Path) -> dict[str, float]:
    """Bytecodes per request of ``side``, by ``file:function``."""
    control, public = free_port(), free_port()
    (tmp / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out = tmp / "opcodes.json"
    env = {**os.environ, **config.env}
    path = os.pathsep.join(filter(None, [str(tmp), env.get("PYTHONPATH")]))
    traced = {**env, "PYTHONPATH": path, "FT_OPCODES_OUT": str(out)}
    server_cmd, client_cmd = config.commands(tmp, control, public, origin)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    server = client = None
    try:
        server = subprocess.Popen(server_cmd, env=traced if side == "server" else env, **quiet)
        time.sleep(1.0)
        client = subprocess.Popen(client_cmd, env=traced if side == "client" else env, **quiet)
        wait_http(public, timeout=30)
        measured = server if side == "server" else client
        measured.send_signal(signal.SIGUSR1)
        time.sleep(0.2)
        report = subprocess.run(
            ["wrk", "-t1", "-c20", f"-d{seconds:g}s", "-H", "Host: bench.localhost",
             f"http://{HOST}:{public}/"],
            capture_output=True, text=True, timeout=seconds + 60,
        ).stdout  # fmt: skip
        measured.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        for proc in (client, server):
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    match = re.search(r"(\d+) requests in", report)
    assert match, report
    requests = int(match[1])
    counts: dict[str, int] = json.loads(out.read_text())
    return {name: count / requests for name, count in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", choices=("server", "client"), default="server")
    parser.add_argument("--seconds", type=float, default=3.0)
    add_plan_arguments(parser, "plugins")
    parser.add_argument("--top", type=int, default=20, help="functions shown per configuration")
    args = parser.parse_args()
    origin = start_origin()
    plan = plan_of(args)
    base: dict[str, float] = {}
    for config in plan:
        with tempfile.TemporaryDirectory(prefix="ft-opcodes-") as tmp:
            per_request = measure(config, args.side, origin, args.seconds, Path(tmp))
        total = sum(per_request.values())
        if config.name == "off":
            base = per_request
            print(f"{args.side}, off: {total:,.0f} bytecodes per request\n", flush=True)
            continue
        added = {
            name: per_request.get(name, 0.0) - base.get(name, 0.0)
            for name in per_request.keys() | base.keys()
        }
        print(f"{args.side}, {config.name}: {total:,.0f} bytecodes per request "
              f"({total - sum(base.values()):+,.0f})")  # fmt: skip
        for name, count in sorted(added.items(), key=lambda kv: -abs(kv[1]))[: args.top]:
            print(f"  {count:+8.1f}  {name}")
        print(flush=True)


if __name__ == "__main__":
    main()
