"""Profile a ferrotunnel TCP tunnel under one workload, on loopback, bounded in time.

Starts a small service (echo / sink / source, the same wire protocol as tunnelbench), a
``ferrotunnel server`` and a ``ferrotunnel client`` in front of it, drives one workload
through the tunnel, and profiles the tunnel processes while it runs:

* ``--profiler cprofile`` runs the chosen side(s) under ``python -m cProfile`` and prints
  the top functions by own time when they exit;
* ``--profiler py-spy`` attaches ``py-spy record --format raw`` to the chosen side(s) for the
  length of the workload and prints the hottest leaf functions and stacks (py-spy must be on
  PATH or given with ``--py-spy``; install it into a separate venv, not the project);
* ``--profiler none`` only measures.

Workloads: ``up`` / ``down`` (bulk bytes through one stream, visitor -> service or back),
``rtt`` (64-byte ping-pong on one connection), ``connect`` (new connection + 1-byte echo).

``--tls`` runs the control connection in TLS 1.3 exactly as the harness's "ferrotunnel tcp
tls" entry does (certificates from ``ferrotunnel cert init``). For bulk workloads the script
also prints, per tunnel process and per GB moved, what ``/proc`` counted: CPU seconds, read
and write system calls, voluntary context switches (how often it went to sleep) and minor
page faults (memory the allocator had to map afresh).
``--pid-file`` writes the two process ids, for attaching ``perf`` while the workload runs.
To run another source tree, set ``PYTHONPATH`` to its ``ferrotunnel-*/src`` folders.

    uv run python benchmarks/profile_tunnel.py --workload up --seconds 8 --profiler py-spy
    uv run python benchmarks/profile_tunnel.py --workload up --seconds 8 --tls

Every address is 127.0.0.1; every loop is bounded by ``--seconds`` and a byte/count cap.
"""

from __future__ import annotations

import argparse
import collections
import os
import pstats
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HOST = "127.0.0.1"
MiB = 1 << 20
CHUNK = memoryview(os.urandom(MiB))
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BIN = os.environ.get("FERROTUNNEL_BIN", str(ROOT / ".venv" / "bin" / "ferrotunnel"))
#: the harness's minimal reference mux, to profile the same workload through it (--impl)
PYTUNNEL = os.environ.get("PYTUNNEL", str(ROOT.parent / "shared" / "bench" / "pytunnel.py"))


# --------------------------------------------------------------------------- the service


class _Handler(socketserver.BaseRequestHandler):
    """First byte: 'E' echo, 'U'+u64 sink N then b'A', 'D'+u64 send N."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(120)
        try:
            kind = _recv_exact(sock, 1)
            if kind == b"E":
                while data := sock.recv(256 << 10):
                    sock.sendall(data)
            elif kind in (b"U", b"D"):
                (n,) = struct.unpack("!Q", _recv_exact(sock, 8))
                if kind == b"U":
                    buf = memoryview(bytearray(MiB))
                    while n > 0:
                        got = sock.recv_into(buf, min(n, MiB))
                        if not got:
                            return
                        n -= got
                    sock.sendall(b"A")
                else:
                    while n > 0:
                        k = min(n, MiB)
                        sock.sendall(CHUNK[:k])
                        n -= k
        except OSError:
            pass


class _Service(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise ConnectionError("EOF")
        buf += data
    return bytes(buf)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {HOST}:{port}")


# --------------------------------------------------------------------------- workloads


def _dial(port: int) -> socket.socket:
    s = socket.create_connection((HOST, port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def bulk(port: int, direction: str, seconds: float, cap: int) -> tuple[str, int]:
    """Move bytes through one stream for ``seconds`` (at most ``cap``); report MB/s and
    the bytes moved."""
    moved = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end and moved < cap:
        n = min(256 * MiB, cap - moved)
        with _dial(port) as s:
            if direction == "up":
                s.sendall(b"U" + struct.pack("!Q", n))
                left = n
                while left > 0:
                    k = min(left, MiB)
                    s.sendall(CHUNK[:k])
                    left -= k
                if _recv_exact(s, 1) != b"A":
                    raise ConnectionError("bad ack")
            else:
                s.sendall(b"D" + struct.pack("!Q", n))
                buf = memoryview(bytearray(MiB))
                got = 0
                while got < n:
                    r = s.recv_into(buf)
                    if not r:
                        raise ConnectionError("EOF")
                    got += r
        moved += n
    dt = time.perf_counter() - t0
    return f"{direction}: {moved / MiB:.0f} MiB in {dt:.2f} s = {moved / dt / 1e6:.0f} MB/s", moved


def rtt(port: int, seconds: float, cap: int) -> str:
    samples: list[int] = []
    msg = os.urandom(64)
    with _dial(port) as s:
        s.sendall(b"E")
        end = time.monotonic() + seconds
        while time.monotonic() < end and len(samples) < cap:
            t0 = time.perf_counter_ns()
            s.sendall(msg)
            got = 0
            while got < 64:
                data = s.recv(64 - got)
                if not data:
                    raise ConnectionError("EOF")
                got += len(data)
            samples.append(time.perf_counter_ns() - t0)
    return "rtt: " + _percentiles(samples)


def connect(port: int, seconds: float, cap: int) -> str:
    samples: list[int] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(samples) < cap:
        t0 = time.perf_counter_ns()
        with _dial(port) as s:
            s.sendall(b"Ex")
            _recv_exact(s, 1)
        samples.append(time.perf_counter_ns() - t0)
    return "connect+first byte: " + _percentiles(samples)


def _percentiles(samples: list[int]) -> str:
    if not samples:
        return "no samples"
    samples.sort()

    def pct(q: float) -> float:
        return samples[min(len(samples) - 1, int(q * len(samples)))] / 1e3

    return f"n={len(samples)} p50 {pct(0.5):.1f} us, p99 {pct(0.99):.1f} us"


# --------------------------------------------------------------------------- profiling


def _summarise_pyspy(raw: Path, top: int) -> str:
    """Collapsed stacks -> the hottest leaf functions (own time) and inclusive totals."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
            if " (" in f
            else f
            for f in stack.split(";")
        ]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            incl[frame] += count
    lines = [f"{raw.name}: {total} samples", "  own time:"]
    lines += [f"    {c / total:6.1%}  {f}" for f, c in own.most_common(top)]
    lines.append("  inclusive:")
    lines += [f"    {c / total:6.1%}  {f}" for f, c in incl.most_common(top)]
    return "\n".join(lines)


def _start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen(
            argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )


def _stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workload", choices=("up", "down", "rtt", "connect"), default="up")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of the workload")
    ap.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    ap.add_argument("--profiler", choices=("none", "cprofile", "py-spy"), default="none")
    ap.add_argument("--side", choices=("server", "client", "both"), default="both")
    ap.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    ap.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    ap.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--bin", default=DEFAULT_BIN, help="the ferrotunnel executable")
    ap.add_argument(
        "--impl",
        choices=("ferrotunnel", "pytunnel-asyncio", "pytunnel-uvloop"),
        default="ferrotunnel",
        help="profile the harness's reference mux (pytunnel.py, $PYTUNNEL) instead",
    )
    ap.add_argument("--tls", action="store_true", help="TLS 1.3 on the control connection")
    ap.add_argument("--pid-file", default="", help="write 'server PID\nclient PID' here")
    ap.add_argument("--out", default="", help="keep profiles here (default: a temp dir)")
    a = ap.parse_args()
    if not 0 < a.seconds <= 120:
        ap.error("--seconds must be within (0, 120]")

    out = Path(a.out or tempfile.mkdtemp(prefix="ft-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    service_port, control_port, public_port, aux_port = (_free_port() for _ in range(4))
    sides = ("server", "client") if a.side == "both" else (a.side,)
    env = dict(os.environ, FERROTUNNEL_LOOP=a.loop)

    service = _Service((HOST, service_port), _Handler)
    threading.Thread(target=service.serve_forever, daemon=True).start()

    argv = {
        "server": [
            "server",
            "--token",
            "profile",
            "--bind",
            f"{HOST}:{control_port}",
            "--http-bind",
            f"{HOST}:{aux_port}",
            "--tcp-bind",
            f"{HOST}:{public_port}",
            "--log-level",
            "warning",
        ],
        "client": [
            "client",
            "--server",
            f"{HOST}:{control_port}",
            "--token",
            "profile",
            "--local-addr",
            f"{HOST}:{service_port}",
            "--protocol",
            "tcp",
            "--no-dashboard",
            "--log-level",
            "warning",
        ],
    }
    if a.impl != "ferrotunnel":
        impl = a.impl.split("-")[1]
        common = ["--mode", "mux", "--impl", impl, "--loop", "asyncio", "--token", "profile"]
        argv = {
            "server": [
                PYTUNNEL,
                "server",
                "--bind",
                f"{HOST}:{control_port}",
                "--public",
                f"{HOST}:{public_port}",
                *common,
            ],
            "client": [
                PYTUNNEL,
                "client",
                "--server",
                f"{HOST}:{control_port}",
                "--local",
                f"{HOST}:{service_port}",
                *common,
            ],
        }
    if a.tls:
        if a.impl != "ferrotunnel":
            ap.error("--tls profiles ferrotunnel only")
        certs = out / "certs"
        if not (certs / "ca.pem").exists():
            subprocess.run(
                [a.bin, "cert", "init", "--out", str(certs), "--hostname", HOST],
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=60,
            )
        argv["server"] += [
            "--tls-cert",
            str(certs / "server.pem"),
            "--tls-key",
            str(certs / "server-key.pem"),
        ]
        argv["client"] += ["--tls", "--tls-ca", str(certs / "ca.pem")]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    spies: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for side in ("server", "client"):
            cmd = [a.bin, *argv[side]] if a.impl == "ferrotunnel" else [sys.executable, *argv[side]]
            if a.profiler == "cprofile" and side in sides:
                cmd = [sys.executable, "-m", "cProfile", "-o", str(out / f"{side}.prof"), *cmd]
            procs[side] = _start(cmd, out / f"{side}.log", env)
            if side == "server":
                _wait_port(control_port, time.monotonic() + 15)
        # ready when a byte makes it through the tunnel
        deadline = time.monotonic() + 20
        while True:
            try:
                with _dial(public_port) as s:
                    s.settimeout(2)
                    s.sendall(b"Ex")
                    if _recv_exact(s, 1) == b"x":
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        if a.profiler == "py-spy":
            for side in sides:
                raw = out / f"{side}.pyspy.txt"
                cmd = [
                    a.py_spy,
                    "record",
                    "--format",
                    "raw",
                    "--rate",
                    str(a.rate),
                    "--duration",
                    str(int(a.seconds + 1)),
                    "--pid",
                    str(procs[side].pid),
                    "--output",
                    str(raw),
                ]
                # --native must stop the process to unwind C stacks; otherwise don't
                cmd.append("--native" if a.native else "--nonblocking")
                spies.append((_start(cmd, out / f"{side}.pyspy.log", env), raw))
            time.sleep(0.5)  # let py-spy attach
        if a.pid_file:
            Path(a.pid_file).write_text(f"{procs['server'].pid}\n{procs['client'].pid}\n")
        cpu0 = {side: _cpu(p.pid) for side, p in procs.items()}
        counters0 = {side: _counters(p.pid) for side, p in procs.items()}
        moved = 0
        if a.workload in ("up", "down"):
            result, moved = bulk(public_port, a.workload, a.seconds, 64 * 1024 * MiB)
        elif a.workload == "rtt":
            result = rtt(public_port, a.seconds, 2_000_000)
        else:
            result = connect(public_port, a.seconds, 200_000)
        cpu = {side: _cpu(p.pid) - cpu0[side] for side, p in procs.items()}
        counters = {side: _counters(p.pid) for side, p in procs.items()}
        print(result)
        print("tunnel CPU seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
        if moved:
            print(_per_gb(moved, cpu, counters0, counters))
        for spy, _ in spies:
            spy.wait(a.seconds + 30)
    finally:
        for proc in procs.values():
            _stop(proc)
        for spy, _ in spies:
            if spy.poll() is None:
                spy.kill()
                spy.wait(5)
        service.shutdown()
        service.server_close()
    for _spy, raw in spies:
        print(_summarise_pyspy(raw, a.top) if raw.exists() else f"{raw}: no profile written")
    if a.profiler == "cprofile":
        for side in sides:
            prof = out / f"{side}.prof"
            if prof.exists():
                print(f"==== cProfile {side} (top {a.top} by own time)")
                pstats.Stats(str(prof)).sort_stats("tottime").print_stats(a.top)
            else:
                print(f"{prof}: no profile written (see {out / (side + '.log')})")
    print(f"profiles and logs in {out}")
    return 0


def _counters(pid: int) -> dict[str, int]:
    """System calls, bytes, voluntary context switches and minor page faults of one process
    so far."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/io") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            values[key] = int(value)
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("voluntary_ctxt_switches"):
                values["vcsw"] = int(line.split()[1])
    with open(f"/proc/{pid}/stat") as fh:
        values["minflt"] = int(fh.read().rsplit(")", 1)[1].split()[7])
    return values


def _per_gb(
    moved: int,
    cpu: dict[str, float],
    before: dict[str, dict[str, int]],
    after: dict[str, dict[str, int]],
) -> str:
    """One line per process: what it cost per GB moved through the tunnel."""
    gb = moved / 1e9
    lines = [f"per GB ({gb:.2f} GB moved):"]
    for side in cpu:
        d = {k: after[side][k] - before[side].get(k, 0) for k in after[side]}
        reads = d.get("syscr", 0)
        lines.append(
            f"  {side}: CPU {cpu[side] / gb:.3f} s, reads {reads / gb:,.0f} "
            f"(avg {d.get('rchar', 0) / max(reads, 1) / 1024:.0f} KiB), "
            f"writes {d.get('syscw', 0) / gb:,.0f} "
            f"(avg {d.get('wchar', 0) / max(d.get('syscw', 0), 1) / 1024:.0f} KiB), "
            f"voluntary switches {d.get('vcsw', 0) / gb:,.0f}, "
            f"page faults {d.get('minflt', 0) / gb:,.0f}"
        )
    lines.append(f"  both: CPU {sum(cpu.values()) / gb:.3f} s")
    return "\n".join(lines)


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) of one process."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sys.exit(main())
