"""What Python's ``ssl`` memory-BIO path costs per GB, each side alone, without sockets.

Every asyncio TLS transport (the stdlib's and uvloop's ``SSLProtocol``, or a link of our own
over ``ssl.SSLObject``) moves bytes the same way: ciphertext is copied into an incoming
``MemoryBIO`` and decrypted one TLS record (≤ 16 KiB) per ``SSLObject.read``; plaintext is
encrypted by ``SSLObject.write`` into an outgoing ``MemoryBIO`` and read back out as
``bytes``. This script times those calls alone, in one process, with fresh ciphertext (a
TLS 1.3 pair over memory BIOs, certificates from trustme), to give the floor any such design
can reach on this machine, next to ``openssl speed -evp aes-256-gcm`` (the cipher alone):

* ``encrypt``: ``write(256 KiB)`` + ``outgoing.read()`` — the sending side of a tunnel;
* ``decrypt copied``: ``incoming.write`` + ``read(256 KiB)`` per record + ``b"".join`` —
  uvloop's ``_do_read__copied`` (an ``asyncio.Protocol`` above TLS);
* ``decrypt into buffer``: ``read(n, buffer)`` per record into a preallocated buffer —
  uvloop's ``_do_read__buffered`` (an ``asyncio.BufferedProtocol`` above TLS) or an own link.

Minor page faults per GB are printed too: ``read(256 KiB)`` allocates 256 KiB per record,
which glibc serves with a fresh ``mmap`` until its dynamic threshold has risen above that
size (after the process frees a larger block). The copied path is therefore measured twice,
before and after freeing one 1 MiB block: the first figure is what a process whose
allocator was never "warmed" pays.

    uv run python benchmarks/tls_cost.py            # about 10 s of CPU
    OPENSSL_CONF=... uv run python benchmarks/tls_cost.py   # e.g. a TLS 1.3 suite limited
                                                            # to AES-128-GCM, see docs
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import ssl
import sys
import time
from collections.abc import Callable

import trustme

CHUNK = 256 << 10
RECORD_ROOM = (16 << 10) + 256  # a buffer with less room left than one record is full


def contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A TLS 1.3 server and client context, as the tunnel's ``tls`` plugin makes them."""
    ca = trustme.CA()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    ca.configure_trust(client)
    return server, client


class Pair:
    """A sender and a receiver SSLObject joined by memory BIOs, handshake done."""

    def __init__(self, server: ssl.SSLContext, client: ssl.SSLContext) -> None:
        self.out = ssl.MemoryBIO()  # the sender's ciphertext
        self.incoming = ssl.MemoryBIO()  # the receiver's ciphertext
        back_in, back_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.sender = server.wrap_bio(back_in, self.out, server_side=True)
        self.receiver = client.wrap_bio(self.incoming, back_out, server_hostname="127.0.0.1")
        for _ in range(10):
            for side in (self.receiver, self.sender):
                with contextlib.suppress(ssl.SSLWantReadError):
                    side.do_handshake()
            if back_out.pending:
                back_in.write(back_out.read())
            if self.out.pending:
                self.incoming.write(self.out.read())
        self.receiver.write(b"x")
        back_in.write(back_out.read())
        if self.sender.read(1) != b"x":
            raise RuntimeError("handshake failed")
        if self.out.pending:  # session tickets
            self.incoming.write(self.out.read())
        self.buffer = memoryview(bytearray(2 * CHUNK))

    def encrypt(self, payload: memoryview) -> bytes:
        self.sender.write(payload)
        return self.out.read()

    def decrypt_copied(self, wire: bytes) -> int:
        self.incoming.write(wire)
        parts: list[bytes] = []
        while self.incoming.pending or self.receiver.pending():
            try:
                chunk = self.receiver.read(CHUNK)
            except ssl.SSLWantReadError:
                break
            parts.append(chunk)
        return len(b"".join(parts))

    def decrypt_into(self, wire: bytes) -> int:
        self.incoming.write(wire)
        buffer, pos, read = self.buffer, 0, self.receiver.read
        while self.incoming.pending or self.receiver.pending():
            if len(buffer) - pos < RECORD_ROOM:
                pos = 0  # (a link would hand the full buffer on and take a new one)
            try:
                pos += read(len(buffer) - pos, buffer[pos:])
            except ssl.SSLWantReadError:
                break
        return pos


def warm_allocator() -> None:
    """Allocate and free a 1 MiB block: glibc then serves blocks up to that size from its
    heap instead of a fresh ``mmap`` each (what a tunnel's own large reads do early on)."""
    block = bytes(1 << 20)
    del block


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(pair: Pair, decrypt: Callable[[bytes], int], nbytes: int) -> tuple[float, float, int]:
    """CPU seconds of each side for ``nbytes`` of plaintext, and the receiver's page faults."""
    payload = memoryview(os.urandom(CHUNK))
    sent = received = 0.0
    faults = 0
    moved = 0
    while moved < nbytes:
        t0 = time.process_time()
        wire = pair.encrypt(payload)
        t1 = time.process_time()
        f0 = minor_faults()
        moved += decrypt(wire)
        faults += minor_faults() - f0
        received += time.process_time() - t1
        sent += t1 - t0
    return sent, received, faults


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.0, help="plaintext per measurement (≤ 16)")
    a = ap.parse_args()
    if not 0 < a.gb <= 16:
        ap.error("--gb must be within (0, 16]")
    nbytes = int(a.gb * 1e9)
    gb = nbytes / 1e9
    server, client = contexts()
    print(f"{ssl.OPENSSL_VERSION}; {gb:.1f} GB of plaintext per line; CPU seconds per GB")
    runs: list[tuple[str, Callable[[Pair], Callable[[bytes], int]]]] = [
        ("decrypt copied (allocator cold)", lambda p: p.decrypt_copied),
        ("decrypt into a buffer", lambda p: p.decrypt_into),
        ("decrypt copied (allocator warm)", lambda p: p.decrypt_copied),
    ]
    for name, choose in runs:
        if "warm" in name:
            warm_allocator()
        pair = Pair(server, client)
        sent, received, faults = measure(pair, choose(pair), nbytes)
        cipher = pair.sender.cipher()
        print(
            f"  encrypt {sent / gb:.3f}  |  {name}: {received / gb:.3f} "
            f"({faults / gb:,.0f} page faults/GB)  [{cipher[0] if cipher else '?'}]"
        )
    print("  the cipher alone: openssl speed -bytes 16384 -evp aes-256-gcm (and -decrypt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
