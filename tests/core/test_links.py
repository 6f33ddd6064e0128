"""ProtocolLink's write coalescing: the first write of a loop iteration goes out at once, the
rest of that iteration's frames in one ``writelines`` at the start of the next."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ferrotunnel.core.links import ProtocolLink
from ferrotunnel.core.session import Role, SessionConfig

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RecordingTransport:
    """Just enough of an asyncio transport to see what a link writes, and when."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1234) if name == "peername" else default

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, chunks: list[bytes | memoryview]) -> None:
        self.calls.append(("writelines", b"".join(bytes(c) for c in chunks)))

    def close(self) -> None:
        self.calls.append(("close", b""))

    def abort(self) -> None:
        self.calls.append(("abort", b""))


def connected() -> tuple[ProtocolLink, RecordingTransport]:
    link = ProtocolLink(Role.SERVER, SessionConfig())
    transport = RecordingTransport()
    link.connection_made(transport)  # type: ignore[arg-type]
    return link, transport


async def test_first_write_goes_out_at_once_and_the_rest_together() -> None:
    link, transport = connected()
    link.write(b"a")
    assert transport.calls == [("write", b"a")]
    link.write(b"b")
    link.writelines([b"c", memoryview(b"d")])
    assert transport.calls == [("write", b"a")]  # gathered until the next iteration
    await asyncio.sleep(0)
    assert transport.calls == [("write", b"a"), ("writelines", b"bcd")]
    link.writelines([b"e", b"f"])  # a new iteration: at once again
    assert transport.calls[-1] == ("writelines", b"ef")


async def test_a_lone_write_per_iteration_is_never_delayed() -> None:
    link, transport = connected()
    for n in range(3):
        link.write(b"%d" % n)
        assert transport.calls[-1] == ("write", b"%d" % n)
        await asyncio.sleep(0)
    assert len(transport.calls) == 3


async def test_gathered_frames_are_written_once_they_add_up() -> None:
    link, transport = connected()
    link.write(b"first")
    big = b"x" * (64 << 10)
    link.write(b"small")
    link.writelines([big])
    assert transport.calls == [("write", b"first"), ("writelines", b"small" + big)]


async def test_close_writes_what_was_gathered_first() -> None:
    link, transport = connected()
    link.write(b"a")
    link.write(b"goaway")
    link.close()
    assert transport.calls == [("write", b"a"), ("writelines", b"goaway"), ("close", b"")]
    link.write(b"late")  # after close: dropped
    await asyncio.sleep(0)
    assert transport.calls[-1] == ("close", b"")


async def test_abort_drops_what_was_gathered() -> None:
    link, transport = connected()
    link.write(b"a")
    link.write(b"never")
    link.abort()
    await asyncio.sleep(0)
    assert transport.calls == [("write", b"a"), ("abort", b"")]
