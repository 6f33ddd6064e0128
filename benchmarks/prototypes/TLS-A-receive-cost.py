"""Prototype A's question, on a real uvloop TLS transport: does the receiving side get cheaper
when the protocol above TLS is an ``asyncio.BufferedProtocol`` (uvloop then decrypts records
straight into its buffer) instead of an ``asyncio.Protocol`` (one ``bytes`` per record, then
``b"".join``)? A sender process pushes 3 GiB through TLS 1.3 (or plain TCP); the receiving
process, which only counts bytes, reports its CPU seconds and minor page faults per GB.

    uv run python benchmarks/prototypes/TLS-A-receive-cost.py [ROUNDS]
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import socket
import ssl
import sys
import tempfile
import time

import trustme
import uvloop

TOTAL = 3 << 30
CHUNK = 256 << 10


def sender(port: int, ca_pem: str | None) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ca_pem is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_verify_locations(ca_pem)
        sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
    data = os.urandom(CHUNK)
    for _ in range(TOTAL // CHUNK):
        sock.sendall(data)
    sock.close()


class Copied(asyncio.Protocol):
    def __init__(self, done: asyncio.Future[int]) -> None:
        self.done, self.n = done, 0

    def data_received(self, data: bytes) -> None:
        self.n += len(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.done.set_result(self.n)


class Buffered(asyncio.BufferedProtocol):
    """Fills 512 KiB buffers front to back, as prototype A's link does."""

    def __init__(self, done: asyncio.Future[int]) -> None:
        self.done, self.n = done, 0
        self.buffer, self.filled = memoryview(bytearray(0)), 0

    def get_buffer(self, sizehint: int) -> memoryview:
        want = max(sizehint, 256 << 10)
        if len(self.buffer) - self.filled < want:
            self.buffer, self.filled = memoryview(bytearray(max(want, 512 << 10))), 0
        return self.buffer[self.filled : self.filled + want]

    def buffer_updated(self, nbytes: int) -> None:
        self.n += len(self.buffer[self.filled : self.filled + nbytes])
        self.filled += nbytes

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.done.set_result(self.n)


async def receive(kind: type[Copied | Buffered], pki: tuple[str, str, str] | None) -> str:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    context = None
    if pki is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(pki[1], pki[2])
    server = await loop.create_server(lambda: kind(done), "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    peer = multiprocessing.Process(target=sender, args=(port, pki[0] if pki else None))
    peer.start()
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.process_time()
    n = await done
    cpu = time.process_time() - t0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    peer.join()
    server.close()
    gb = n / 1e9
    name = f"{kind.__name__} {'TLS' if pki else 'plain'}"
    return f"{name:15} {cpu / gb:.3f} s/GB, {faults / gb:,.0f} page faults/GB"


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with tempfile.TemporaryDirectory() as tmp:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        paths = (f"{tmp}/ca.pem", f"{tmp}/cert.pem", f"{tmp}/key.pem")
        ca.cert_pem.write_to_path(paths[0])
        cert.cert_chain_pems[0].write_to_path(paths[1])
        cert.private_key_pem.write_to_path(paths[2])
        for _ in range(rounds):
            for kind in (Copied, Buffered):
                for pki in (paths, None):
                    print(uvloop.run(receive(kind, pki)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
