"""CPU per captured HTTP exchange of the dashboard's tap, without a tunnel around it.

The live numbers (client CPU µs per request under wrk) swing by ±10 % on a shared machine;
this feeds the tap the chunks the client's relay hands it in that load — a kept-alive GET
with the ingress's forwarding fields, an nginx-like response head with a 1 KiB body in the
same chunk — and times it with :mod:`timeit`. ``--baseline REF`` loads the capture modules
as they were at a git revision too and times both in the same run, so a change is measured
against its base on one machine state:

    uv run python benchmarks/capture_cpu.py                  # this tree
    uv run python benchmarks/capture_cpu.py --baseline HEAD~3
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from time import process_time
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "ferrotunnel-observability/src/ferrotunnel/observability"
MODULES = ("capture", "http1", "exchange", "store")

REQUEST = (
    b"GET /index.html HTTP/1.1\r\nHost: bench.localhost\r\nX-Forwarded-For: 127.0.0.1\r\n"
    b"X-Forwarded-Proto: http\r\nForwarded: for=127.0.0.1;proto=http\r\n\r\n"
)
BODY = b"<html><body>" + b"x" * 1012
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0 (Ubuntu)\r\n"
    b"Date: Fri, 05 Dec 2025 23:12:34 GMT\r\nContent-Type: text/html\r\n"
    b"Content-Length: 1024\r\nLast-Modified: Fri, 05 Dec 2025 23:08:00 GMT\r\n"
    b'Connection: keep-alive\r\nETag: "69336640-400"\r\nAccept-Ranges: bytes\r\n'
    b"X-Frame-Options: SAMEORIGIN\r\n\r\n" + BODY
)
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"200\r\n" + b"x" * 512 + b"\r\n200\r\n" + b"y" * 512 + b"\r\n0\r\n\r\n"
)


def load(ref: str | None) -> ModuleType:
    """The capture package of this tree, or of git revision ``ref`` (imported from a copy)."""
    if ref is None:
        return importlib.import_module("ferrotunnel.observability")
    name = "_capture_" + "".join(ch if ch.isalnum() else "_" for ch in ref)
    with tempfile.TemporaryDirectory(prefix="capture-cpu-") as tmp:
        where = Path(tmp) / name
        where.mkdir()
        (where / "__init__.py").write_text("")
        for module in MODULES:
            source = subprocess.run(
                ["git", "show", f"{ref}:{PACKAGE}/{module}.py"],
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            (where / f"{module}.py").write_text(source)
        sys.path.insert(0, tmp)
        try:
            for module in MODULES:
                importlib.import_module(f"{name}.{module}")
        finally:
            sys.path.remove(tmp)
    return importlib.import_module(name)


def workloads(package: ModuleType) -> dict[str, Callable[[], Any]]:
    """Each workload does one exchange per call."""
    capture = importlib.import_module(f"{package.__name__}.capture")
    stores = importlib.import_module(f"{package.__name__}.store")
    store = stores.Store()
    store.set_tunnel(stores.TunnelState("app", "http", "127.0.0.1:8000"))  # counted, as live
    kept = capture.ExchangeTap(store, "app", 64 * 1024, visitor=("127.0.0.1", 40000))
    split = capture.ExchangeTap(store, "app", 64 * 1024, visitor=("127.0.0.1", 40000))
    chunked = capture.ExchangeTap(store, "app", 64 * 1024, visitor=("127.0.0.1", 40000))
    request, response = memoryview(REQUEST), RESPONSE

    def keep_alive() -> None:
        kept.to_origin(request)
        kept.to_visitor(response)

    def fresh_stream() -> None:
        tap = capture.ExchangeTap(store, "app", 64 * 1024, visitor=("127.0.0.1", 40000))
        tap.to_origin(request)
        tap.to_visitor(response)
        tap.closed(None)

    def heads_split() -> None:
        split.to_origin(request[:30])
        split.to_origin(request[30:])
        split.to_visitor(response[:100])
        split.to_visitor(response[100:])

    def chunked_body() -> None:
        chunked.to_origin(request)
        chunked.to_visitor(CHUNKED)

    return {
        "keep-alive GET, 1 KiB": keep_alive,
        "a stream per exchange": fresh_stream,
        "heads split in two": heads_split,
        "chunked response": chunked_body,
    }


def per_call_us(call: Callable[[], Any], number: int) -> float:
    """CPU µs per call over ``number`` calls (CPU time, not wall time: another process on
    the same core does not count)."""
    return timeit.timeit(call, process_time, number=number) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", metavar="REF", help="also time the modules at git REF")
    parser.add_argument("--number", type=int, default=20000, help="exchanges per run")
    parser.add_argument("--repeat", type=int, default=7, help="runs; the best is kept")
    args = parser.parse_args()
    trees = {"this tree": workloads(load(None))}
    if args.baseline:
        trees = {args.baseline: workloads(load(args.baseline)), **trees}
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.repeat):  # the trees take turns, so that a busy spell hits them alike
        for tree, cases in trees.items():
            for case, call in cases.items():
                took = per_call_us(call, args.number)
                best[tree, case] = min(took, best.get((tree, case), took))
    print(f"{'µs per exchange':24s}" + "".join(f"{tree:>14s}" for tree in trees))
    for case in next(iter(trees.values())):
        print(f"{case:24s}" + "".join(f"{best[tree, case]:14.2f}" for tree in trees))


if __name__ == "__main__":
    main()
