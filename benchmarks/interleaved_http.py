"""req/s of the tunnel with and without plugins (or observability), measured interleaved.

The harness measures each tunnel once, for 10 s, one after the other; on this machine the
same tunnel's req/s moves by ±20 % from one such measurement to the next, which drowns a
10 % effect unless dozens of runs are taken. Here every configuration's server and client
are started once, side by side (an idle tunnel costs nothing), and wrk visits them in turn,
``--rounds`` times, for ``--seconds`` each, the order reversed every other round (ABBA...).
Each configuration is compared with ``off`` *within a round*, so the machine's drift over
minutes cancels; the median of the rounds' ratios is reported with its quartiles.

The load is the harness's: ``wrk -t2 -c50`` against an nginx origin serving a 1 KiB file
(a small Python origin when nginx is not installed, which makes the tunnel's share of the
CPU, and so every drop, smaller: the output says which).

    uv run python benchmarks/interleaved_http.py --suite plugins --only "all five"
    uv run python benchmarks/interleaved_http.py --suite observability \\
        --only "capture + metrics + tracing, all" "capture + metrics + tracing, 10 %"

``--against BIN`` runs every configuration a second time with another build's executable
(``BIN``: say a worktree of an older commit, ``git worktree add /tmp/old REV && cd /tmp/old &&
uv sync --all-packages``, then ``/tmp/old/.venv/bin/ferrotunnel``), in the same rounds: an
A/B of two commits that the machine's drift cannot tell apart from a change. Those rows are
named ``NAME @BIN`` and compared with ``off @BIN``.

Every address is 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import statistics
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
    wrk,
)

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/cbt;
    proxy_temp_path {tmp}/pt;
    fastcgi_temp_path {tmp}/ft;
    uwsgi_temp_path {tmp}/ut;
    scgi_temp_path {tmp}/st;
    server {{
        listen {host}:{port};
        root {tmp}/www;
        location / {{ }}
    }}
}}
"""


def start_nginx(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    """nginx serving a 1 KiB ``index.html``, as the harness's origin does."""
    folder = tmp / "nginx"
    (folder / "www").mkdir(parents=True)
    for path in (tmp, folder, folder / "www"):
        path.chmod(0o755)  # nginx's workers may run as another user
    (folder / "www" / "index.html").write_bytes(b"x" * 1024)
    port = free_port()
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=folder, host=HOST, port=port))
    nginx = subprocess.Popen(
        ["nginx", "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(port)
    return nginx, port


class Tunnel:
    """One configuration's server and client, running for the whole measurement."""

    def __init__(self, config: Config, origin: int, tmp: Path) -> None:
        self.config = config
        self.public = free_port()
        folder = tmp / re.sub(r"\W+", "-", config.name)
        folder.mkdir()
        server_cmd, client_cmd = config.commands(folder, free_port(), self.public, origin)
        quiet = {
            "env": {**os.environ, **config.env},
            "stdout": subprocess.DEVNULL,
            "stderr": subprocess.DEVNULL,
        }
        self.processes = [subprocess.Popen(server_cmd, **quiet)]  # type: ignore[call-overload]
        time.sleep(1.0)
        self.processes.append(subprocess.Popen(client_cmd, **quiet))  # type: ignore[call-overload]
        wait_http(self.public)

    def req_per_second(self, seconds: float) -> float:
        requests, took = wrk(self.public, seconds)
        return requests / took

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
            process.wait(10)


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    low, _, high = statistics.quantiles(values, n=4)
    return low, high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="each wrk run")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--against", metavar="BIN", help="also run each configuration with BIN")
    add_plan_arguments(parser, "plugins")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ft-interleaved-"))
    nginx = None
    if shutil.which("nginx"):
        nginx, origin = start_nginx(tmp)
        origin_text = "nginx, 1 KiB file"
    else:
        origin, origin_text = start_origin(), "a Python origin (nginx is not installed)"
    tunnels: list[Tunnel] = []
    try:
        plan = plan_of(args)
        if args.against:
            plan += [
                dataclasses.replace(c, name=f"{c.name} @{args.against}", binary=args.against)
                for c in plan
            ]
        tunnels = [Tunnel(config, origin, tmp) for config in plan]
        for tunnel in tunnels:
            tunnel.req_per_second(1)  # warm-up: connection pools, caches
        rates: dict[str, list[float]] = {t.config.name: [] for t in tunnels}
        for round_ in range(args.rounds):
            order = tunnels if round_ % 2 == 0 else tunnels[::-1]
            for tunnel in order:
                rates[tunnel.config.name].append(tunnel.req_per_second(args.seconds))
            print(
                f"round {round_ + 1}: "
                + ", ".join(f"{name} {values[-1]:,.0f}" for name, values in rates.items()),
                flush=True,
            )
    finally:
        for tunnel in tunnels:
            tunnel.stop()
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
    print(
        f"\n{args.rounds} rounds of wrk -t2 -c50 -d{args.seconds:g}s per configuration, "
        f"interleaved; origin: {origin_text}\n"
    )
    print("| configuration | median req/s | drop vs off: median | quartiles | rounds better |")
    print("|---|---:|---:|---:|---:|")
    for name, values in rates.items():
        label, at, binary = name.partition(" @")
        if label == "off":
            print(f"| {name} | {statistics.median(values):,.0f} | | | |")
            continue
        base = rates["off" + at + binary]
        drops = [100 * (v / b - 1) for v, b in zip(values, base, strict=True)]
        low, high = quartiles(drops)
        better = sum(v >= b for v, b in zip(values, base, strict=True))
        print(
            f"| {name} | {statistics.median(values):,.0f} | {statistics.median(drops):+.1f} % "
            f"| {low:+.1f} to {high:+.1f} % | {better}/{len(drops)} |"
        )


if __name__ == "__main__":
    main()
