"""Run the real ``ferrotunnel`` command and talk to it over real loopback sockets.

Everything here waits against a deadline: no test can hang, and a failure message always
carries what the process printed.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

HOST = "127.0.0.1"


def ferrotunnel_exe() -> str:
    """The console script of the environment running the tests (works under ``uv run``)."""
    beside = Path(sys.executable).parent / "ferrotunnel"
    if beside.exists():
        return str(beside)
    found = shutil.which("ferrotunnel")
    if found is None:
        raise RuntimeError("the ferrotunnel console script is not installed: run `uv sync`")
    return found


def child_env(**extra: str) -> dict[str, str]:
    """This environment without any FERROTUNNEL_* setting, unbuffered, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERROTUNNEL_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def free_port() -> int:
    """A port that was free a moment ago (tiny race accepted: only where a flag needs one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class CliProcess:
    """A running ``ferrotunnel`` process whose stdout and stderr are read line by line."""

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, exe: str | None = None
    ) -> None:
        self.args = [exe or ferrotunnel_exe(), *args]
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env if env is not None else child_env(),
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        self._cond = threading.Condition()
        self._out: list[str] = []
        self._err: list[str] = []
        self._eof = {"stdout": False, "stderr": False}
        self._cursor = {"stdout": 0, "stderr": 0}  # lines already consumed by expect()
        assert self.popen.stdout is not None
        assert self.popen.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.popen.stdout, self._out, "stdout")),
            threading.Thread(target=self._read, args=(self.popen.stderr, self._err, "stderr")),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()

    def _read(self, pipe: IO[str], sink: list[str], name: str) -> None:
        try:
            for line in pipe:
                with self._cond:
                    sink.append(line.rstrip("\n"))
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self._eof[name] = True
                self._cond.notify_all()

    # ------------------------------------------------------------------ output

    @property
    def stdout(self) -> str:
        with self._cond:
            return "\n".join(self._out)

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self._err)

    def describe(self) -> str:
        return (
            f"command: {' '.join(self.args)}\n"
            f"returncode: {self.popen.poll()}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )

    def expect(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait for the next stdout line matching ``pattern`` (searched, not anchored)."""
        return self._expect("stdout", pattern, timeout)

    def expect_stderr(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait for the next stderr line matching ``pattern`` (searched, not anchored)."""
        return self._expect("stderr", pattern, timeout)

    def _expect(self, name: str, pattern: str, timeout: float) -> re.Match[str]:
        regex = re.compile(pattern)
        lines = self._out if name == "stdout" else self._err
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while self._cursor[name] < len(lines):
                    line = lines[self._cursor[name]]
                    self._cursor[name] += 1
                    match = regex.search(line)
                    if match is not None:
                        return match
                if self._eof[name]:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        self.popen.poll()
        raise AssertionError(
            f"no {name} line matching {pattern!r} within {timeout} s\n{self.describe()}"
        )

    # ------------------------------------------------------------------ lifecycle

    def wait_exit(self, timeout: float) -> int:
        """The exit status, or an AssertionError if it is still running after ``timeout``."""
        try:
            status = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout} s\n{self.describe()}") from None
        self._join_readers(timeout=5.0)
        return status

    def signal(self, signum: signal.Signals) -> None:
        self.popen.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)
        self._join_readers(timeout=5.0)

    def _join_readers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for reader in self._readers:
            reader.join(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Teardown: kill if still running, reap, release the pipes."""
        try:
            self.kill()
        finally:
            for pipe in (self.popen.stdout, self.popen.stderr):
                if pipe is not None:
                    pipe.close()


def run_cli(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 15.0,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short ``ferrotunnel`` command to completion (stdin is not a terminal)."""
    return subprocess.run(
        [ferrotunnel_exe(), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env if env is not None else child_env(),
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


# ---------------------------------------------------------------------- the local service


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        try:
            while chunk := sock.recv(65536):
                sock.sendall(chunk)
        except OSError:
            pass


class EchoServer(socketserver.ThreadingTCPServer):
    """A TCP echo service on an ephemeral loopback port, one thread per connection."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # tests open many connections at once (the default is 5)

    def __init__(self) -> None:
        super().__init__((HOST, 0), _EchoHandler)
        self.port = int(self.server_address[1])
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)


# ---------------------------------------------------------------------- traffic


def echo_roundtrip(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` to ``HOST:port`` while reading the reply; return what came back
    (shorter than ``data`` if the connection closed early)."""
    deadline = time.monotonic() + timeout
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        received = echo_on(sock, data, deadline)
    return received


def echo_on(sock: socket.socket, data: bytes, deadline: float) -> bytes:
    """Full-duplex exchange on an open socket: send all of ``data``, read as many bytes."""
    sock.setblocking(False)
    view = memoryview(data)
    sent = 0
    received = bytearray()
    try:
        while len(received) < len(data):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"echo: sent {sent}/{len(data)} B, received {len(received)} B in time"
                )
            writers = [sock] if sent < len(data) else []
            readable, writable, _ = select.select([sock], writers, [], remaining)
            if readable:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                received += chunk
            if writable:
                with contextlib.suppress(BlockingIOError):
                    sent += sock.send(view[sent : sent + (1 << 16)])
    finally:
        sock.setblocking(True)
    return bytes(received)


def wait_for_echo(port: int, timeout: float, payload: bytes = b"ping\n") -> float:
    """Poll until an echo through ``port`` succeeds; return how long it took."""
    started = time.monotonic()
    deadline = started + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            reply = echo_roundtrip(port, payload, timeout=min(2.0, deadline - time.monotonic()))
        except (OSError, TimeoutError) as exc:
            last = exc
        else:
            if reply == payload:
                return time.monotonic() - started
            last = f"reply {reply!r}"
        time.sleep(0.05)
    raise AssertionError(f"no echo through port {port} within {timeout} s (last: {last})")


def wait_closed(sock: socket.socket, timeout: float) -> bytes:
    """Read until the peer closes (EOF or reset); return the bytes read before that."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"connection still open after {timeout} s")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


# ---------------------------------------------------------------------- the tunnel


CONTROL_RE = r"^\s+control plane\s+(?P<host>\S+):(?P<port>\d+)$"
TCP_INGRESS_RE = r"^\s+TCP ingress\s+(?P<host>\S+):(?P<port>\d+)$"
TUNNEL_RE = r"^\s+tcp://(?P<host>[^\s:]+):(?P<port>\d+)\s+->\s+(?P<local>\S+)$"


class TunnelServer:
    """``ferrotunnel server`` started and ready; its real ports parsed from stdout."""

    def __init__(self, proc: CliProcess, *, tcp_ingress: bool = True) -> None:
        self.proc = proc
        self.control_port = int(proc.expect(CONTROL_RE).group("port"))
        self.tcp_port = int(proc.expect(TCP_INGRESS_RE).group("port")) if tcp_ingress else None
        proc.expect(r"^Press Ctrl-C to stop\.$")

    @property
    def control(self) -> str:
        return f"{HOST}:{self.control_port}"


class TunnelClient:
    """``ferrotunnel client`` connected; the public port it was granted parsed from stdout."""

    def __init__(self, proc: CliProcess, timeout: float = 10.0) -> None:
        self.proc = proc
        match = proc.expect(TUNNEL_RE, timeout=timeout)
        self.public_port = int(match.group("port"))
        self.local = match.group("local")
