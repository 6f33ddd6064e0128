"""Split a ``perf record --call-graph dwarf`` profile of a tunnel process into cost buckets.

libcrypto and libssl ship without symbols here, so a flat profile shows only addresses; the
call stacks still name the exported entry points. Each sample goes to the first bucket whose
rule matches its stack (leaf first):

* ``cipher``: below ``EVP_EncryptUpdate`` / ``EVP_DecryptUpdate`` (AES-GCM itself);
* ``TLS record layer``: elsewhere below ``SSL_read_ex`` / ``SSL_write_ex`` (framing, nonce and
  AAD set-up, copies into and out of OpenSSL's record buffers, their malloc), split by leaf;
* ``GIL``: releasing and re-taking the GIL around the ``ssl`` calls;
* ``MemoryBIO``: ``MemoryBIO.read`` / ``write`` (copies between Python and OpenSSL);
* ``b''.join``: joining decrypted records (uvloop's copied read path);
* ``kernel``: system calls, softirq, page faults; then memcpy, the interpreter, uvloop, libc.

Multiply by the process's CPU seconds per GB (``profile_tunnel.py`` prints it) to get s/GB::

    perf record -e cpu-clock -F 299 --call-graph dwarf,16384 -p PID -o client.data -- sleep 3
    python3 benchmarks/perf_buckets.py client.data 0.785
"""

from __future__ import annotations

import collections
import subprocess
import sys

_GIL = ("drop_gil", "take_gil", "PyEval_SaveThread", "PyEval_RestoreThread")


def bucket(frames: list[str]) -> str:
    """The bucket of one sample; ``frames`` are ``symbol (object)``, leaf first."""
    leaf = frames[0]
    stack = " | ".join(frames)
    if "EVP_DecryptUpdate" in stack or "EVP_EncryptUpdate" in stack:
        return "cipher (EVP_*cryptUpdate)"
    if "SSL_read_ex" in stack or "SSL_write_ex" in stack:
        if "memcpy" in leaf or "memmove" in leaf:
            return "TLS record layer: memcpy"
        if "memset" in leaf:
            return "TLS record layer: memset"
        if any(name in leaf for name in ("malloc", "free", "_int_")):
            return "TLS record layer: malloc/free"
        if any(name in stack.split("SSL_")[0] for name in _GIL):
            return "GIL release/acquire (around SSL calls)"
        return "TLS record layer: other libssl/libcrypto"
    if any(name in stack for name in _GIL):
        return "GIL release/acquire (around SSL calls)"
    if "_ssl_MemoryBIO" in stack:
        return "MemoryBIO read/write"
    if "stringlib_bytes_join" in stack:
        return "b''.join"
    if "[kernel.kallsyms]" in leaf or "entry_SYSCALL" in stack:
        return "kernel (syscalls, softirq, faults)"
    if "memmove" in leaf or "memcpy" in leaf:
        return "memcpy, elsewhere"
    if "libpython" in leaf or "_PyEval" in leaf:
        return "python interpreter"
    if "loop.cpython" in leaf:
        return "uvloop"
    if "libc.so" in leaf:
        return "libc, other"
    return "other"


def samples(path: str) -> list[list[str]]:
    """Each sample's frames from ``perf script``, leaf first."""
    text = subprocess.run(
        ["perf", "script", "-i", path], capture_output=True, text=True, check=True
    ).stdout
    stacks = []
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()[1:]
        frames = [line.strip().split(" ", 1)[-1] for line in lines if line.strip()]
        if frames:
            stacks.append(frames)
    return stacks


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    path, cpu_per_gb = sys.argv[1], float(sys.argv[2])
    counts = collections.Counter(bucket(frames) for frames in samples(path))
    total = sum(counts.values())
    print(f"{path}: {total} samples, {cpu_per_gb} CPU-s/GB")
    for name, n in counts.most_common():
        print(f"  {n / total:6.1%} {n / total * cpu_per_gb:6.3f} s/GB  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
